"""Hostile inputs from the security review of main (issue 16): a data file without its header row, absurd
finite numbers, TOML nested thousands deep, a damaged ledger and special files in a run directory.

Every case goes through the hostile-input harness (`tests/hostile.py`): exit code, a message naming what
is wrong, no traceback, no planted patient value on screen, nothing changed outside `out/`.

Findings covered: (1) a CSV saved without its header row made pandas take the first patient's row as the
header, and its cells were printed as "columns not in the schema"; (7) finite but absurd floats (1e300,
1e-300) passed config load and then hung, divided by zero or overflowed a timer; (8) TOML nested 5000 deep
crashed the three TOML readers with RecursionError; (9) a ledger holding `[]`, nested JSON or a Latin-1
byte crashed `fedhealth budget` or named no file; (11) a FIFO or a link to /dev/zero where a run-directory
file, ledger, audit log or key belongs was reported as missing (or would block on open).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from fedhealth.durable import regular_file_problem
from fedhealth.study.ranges import RANGES
from tests.hostile import SENTINELS, Hostile, check, write_hospital
from tests.support import ROOT, SMOKE, TOY_SCHEMA

DEEP = "a = " + "[" * 5000 + "]" * 5000 + "\n"
DEEP_JSON = "[" * 100_000 + "]" * 100_000


# ---- (1) a data file without its header row ------------------------------------------------------------
def headerless(ws: Path) -> None:
    """toy.csv with its header line removed: the first record (ages planted with sentinels) comes first."""
    path = write_hospital(ws / "data")
    lines = path.read_text().splitlines(keepends=True)
    assert SENTINELS[0] in lines[1]  # the first record holds a planted value, so an echo would show it
    path.write_text("".join(lines[1:]))


def repeated_unknown(ws: Path) -> None:
    """A header with the schema's columns, then two cells that repeat one non-schema name (a patient value)."""
    path = write_hospital(ws / "data")
    lines = path.read_text().splitlines(keepends=True)
    lines[0] = lines[0].rstrip("\n").replace("note", f"{SENTINELS[2]},{SENTINELS[2]}") + "\n"
    lines[1:] = [line.rstrip("\n") + ",x\n" for line in lines[1:]]
    path.write_text("".join(lines))


def unknown_named(ws: Path) -> None:
    """A header whose extra columns are named with planted values (a spreadsheet that put a record up there)."""
    path = write_hospital(ws / "data")
    lines = path.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace("note", SENTINELS[1])
    path.write_text("".join(lines))


def validate_toy(*extra: str):
    return lambda ws: ["validate", "--schema", str(ws / "data" / "schema.toml"), "--data",
                       str(ws / "data" / "toy.csv"), *extra]


def json_report_clean(ws: Path, output: str) -> None:
    text = (ws / "out" / "report.json").read_text()
    assert "header row missing" in text
    assert not any(s in text for s in SENTINELS), text


def headerless_study(ws: Path) -> None:
    """Three file hospitals; hospital b's file has no header row."""
    data = ws / "data"
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        write_hospital(data, f"{name}.csv", n=60, seed=seed)
    lines = (data / "b.csv").read_text().splitlines(keepends=True)
    (data / "b.csv").write_text("".join(lines[1:]))
    (ws / "study.toml").write_text(
        f'name = "files"\nschema = "{data / "schema.toml"}"\n[model]\nname = "logreg"\n[federation]\nrounds = 1\n'
        + "".join(f'[[hospitals]]\nname = "{n}"\ndata = "{data / f"{n}.csv"}"\n' for n in "abc"))


# ---- (7) absurd finite numbers -------------------------------------------------------------------------
def smoke(*sets: str):
    return lambda ws: ["simulate", "-c", str(SMOKE), "--out", str(ws / "out"),
                       *[a for s in sets for a in ("--set", s)]]


RECORD = ("privacy.mode=record", "privacy.noise_multiplier=1.0")


def out_of_range(key: str, value: str, *sets: str) -> Hostile:
    low, high, _ = RANGES[key]
    return Hostile(f"{key}={value}", smoke(*sets, f"{key}={value}"), 2,
                   (key, f"give a value between {low:g} and {high:g}"))


# ---- (8) TOML nested too deeply ------------------------------------------------------------------------
def deep(name: str):
    def setup(ws: Path) -> None:
        write_hospital(ws / "data")
        (ws / name).write_text(DEEP)
        (ws / "ledger.json").write_text("{}")
    return setup


# ---- (9) a damaged ledger ------------------------------------------------------------------------------
def ledger(content: bytes):
    return lambda ws: (ws / "ledger.json").write_bytes(content)


def budget(ws: Path) -> list[str]:
    return ["budget", str(ws / "ledger.json")]


# ---- (11) special files --------------------------------------------------------------------------------
def run_dir(ws: Path) -> Path:
    from fedhealth.data.study_file import load_config
    from fedhealth.runs import rundir

    return rundir.create_run_dir(load_config(SMOKE, ["federation.rounds=1"]), ws / "run")


def special(name: str, kind: str):
    """A run directory whose `name` is a FIFO (`kind="fifo"`) or a link to /dev/zero (`kind="zero"`)."""
    def setup(ws: Path) -> None:
        run = run_dir(ws)
        target = run / name
        target.unlink(missing_ok=True)
        if kind == "fifo":
            os.mkfifo(target)
        else:
            target.symlink_to("/dev/zero")
    return setup


def fifo_at(name: str):
    return lambda ws: os.mkfifo(ws / name)


def node_keys(ws: Path) -> None:
    from fedhealth.security.certs import init_hospital_keys

    keys = init_hospital_keys(ws / "keys", "city-tertiary")
    os.mkfifo(ws / "node.pub")
    (ws / "node.key").write_bytes(Path(keys.node.private_key).read_bytes())


CASES = [
    # (1) no patient value from a header line
    Hostile("validate-headerless-csv", validate_toy(), 1, ("toy.csv", "header row missing", "age, glucose"),
            setup=headerless),
    Hostile("validate-headerless-csv-json", lambda ws: [*validate_toy()(ws), "--json", str(ws / "out" / "report.json")],
            1, ("header row missing",), setup=lambda ws: (headerless(ws), (ws / "out").mkdir()),
            extra=json_report_clean),
    Hostile("simulate-headerless-hospital", lambda ws: ["simulate", "-c", str(ws / "study.toml"), "--out",
                                                        str(ws / "out")], 2, ("b.csv", "header row missing"),
            setup=headerless_study),
    Hostile("validate-repeated-unknown-header-cells", validate_toy(), 1,
            ("more than once", "the cells at positions 7, 8"), setup=repeated_unknown),
    Hostile("validate-unknown-column-named-with-a-value", validate_toy(), 0,
            ("1 column not in the schema, ignored: position 7",), setup=unknown_named),
    # (7) finite but absurd numbers, each with its reason and range
    out_of_range("privacy.target_epsilon", "1e300", "privacy.mode=record"),
    out_of_range("privacy.noise_multiplier", "1e-300", "privacy.mode=record"),
    out_of_range("federation.secure_aggregation.timeout", "1e300"),
    out_of_range("federation.wait_for_hospitals", "1e300"),
    out_of_range("federation.cpus_per_client", "1e-300"),
    out_of_range("training.weight_decay", "1e300"),
    out_of_range("federation.strategy.proximal_mu", "1e300", "federation.strategy.name=fedprox"),
    out_of_range("federation.strategy.server_learning_rate", "1e300", "federation.strategy.name=fedadam"),
    out_of_range("training.learning_rate", "1e-320"),
    out_of_range("privacy.max_grad_norm", "1e-9", *RECORD),
    out_of_range("privacy.clipping_norm", "1e300", "privacy.mode=hospital", "privacy.noise_multiplier=1.0"),
    out_of_range("federation.secure_aggregation.update_bound", "1e300"),
    Hostile("site-policy-cap-1e300", lambda ws: ["budget", str(ws / "ledger.json"), "--policy",
                                                 str(ws / "policy.toml")], 2,
            ("policy.toml", "max_epsilon = 1e+300", "between 0.01 and 1000"),
            setup=lambda ws: ((ws / "ledger.json").write_text("{}"),
                              (ws / "policy.toml").write_text("max_epsilon = 1e300\n"))),
    # (8) TOML nested 5000 deep: named, exit 2, from each of the three readers
    Hostile("deep-schema", lambda ws: ["validate", "--schema", str(ws / "deep.toml"), "--data",
                                       str(ws / "data" / "toy.csv")], 2, ("deep.toml", "nested too deeply"),
            setup=deep("deep.toml")),
    Hostile("deep-study-config", lambda ws: ["synth", "-c", str(ws / "deep.toml"), "--out", str(ws / "out")], 2,
            ("deep.toml", "nested too deeply"), setup=deep("deep.toml")),
    Hostile("deep-site-policy", lambda ws: ["budget", str(ws / "ledger.json"), "--policy", str(ws / "deep.toml")],
            2, ("deep.toml", "nested too deeply"), setup=deep("deep.toml")),
    # (9) a damaged ledger: the file named, exit 2
    Hostile("budget-ledger-holds-an-array", budget, 2, ("ledger.json", "array"), setup=ledger(b"[]")),
    Hostile("budget-ledger-nested-too-deeply", budget, 2, ("ledger.json", "nested too deeply"),
            setup=ledger(DEEP_JSON.encode())),
    Hostile("budget-ledger-latin1", budget, 2, ("ledger.json", "not UTF-8"),
            setup=ledger('{"hospital": "Universit\xe9"}'.encode("latin-1"))),
    Hostile("budget-ledger-wrong-types", budget, 2, ("ledger.json", "not a number"),
            setup=ledger(b'{"hospital": "a", "delta": "x"}')),
    # (11) special files: named as what they are, never opened
    Hostile("status-state-is-a-fifo", lambda ws: ["status", str(ws / "run")], 2, ("state.json", "FIFO"),
            setup=special("state.json", "fifo")),
    Hostile("status-config-is-dev-zero", lambda ws: ["status", str(ws / "run")], 2,
            ("config.resolved.toml", "character device", "/dev/zero"), setup=special("config.resolved.toml", "zero")),
    Hostile("resume-state-is-dev-zero", lambda ws: ["simulate", "--resume", str(ws / "run")], 2,
            ("state.json", "character device"), setup=special("state.json", "zero")),
    Hostile("report-summary-is-a-fifo", lambda ws: ["report", str(ws / "run")], 2, ("summary.json", "FIFO"),
            setup=special("summary.json", "fifo")),
    Hostile("report-metrics-is-dev-zero", lambda ws: ["report", str(ws / "run")], 2,
            ("metrics.jsonl", "character device"), setup=special("metrics.jsonl", "zero")),
    Hostile("report-rounds-is-a-fifo", lambda ws: ["report", str(ws / "run")], 2, ("rounds.jsonl", "FIFO"),
            setup=special("rounds.jsonl", "fifo")),
    Hostile("budget-ledger-is-a-fifo", budget, 2, ("ledger.json", "FIFO"), setup=fifo_at("ledger.json")),
    Hostile("audit-verify-log-is-a-fifo", lambda ws: ["audit", "verify", str(ws / "audit.jsonl")], 2,
            ("audit.jsonl", "FIFO"), setup=fifo_at("audit.jsonl")),
    Hostile("certs-check-node-public-key-is-a-fifo", lambda ws: ["certs", "check-node", str(ws / "node.key"),
                                                                 str(ws / "node.pub")], 2,
            ("node.pub", "FIFO", "SuperNode public key"), setup=node_keys),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_review(case: Hostile, tmp_path: Path) -> None:
    check(case, tmp_path)


def test_regular_file_problem_names_each_kind(tmp_path: Path) -> None:
    """One helper says what a path is without opening it; a regular or missing file is no problem."""
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "plain").write_text("x")
    assert regular_file_problem(tmp_path / "pipe") == "is a FIFO (named pipe), not a regular file"
    assert regular_file_problem(tmp_path / "zero") == ("is a character device (a link to /dev/zero), "
                                                       "not a regular file")
    assert regular_file_problem(tmp_path) == "is a directory, not a regular file"
    assert regular_file_problem(tmp_path / "plain") is None
    assert regular_file_problem(tmp_path / "missing") is None
    assert regular_file_problem(tmp_path / "plain" / "below") is None  # a path through a file is not there


def test_one_special_file_table(tmp_path: Path) -> None:
    """The data and study-file readers use the shared helper: no second table of file kinds is left."""
    for module in ("fedhealth/data/validation.py", "fedhealth/study/textfile.py"):
        text = (ROOT / module).read_text()
        assert "S_ISFIFO" not in text, module


def test_every_range_is_in_the_docs_and_honest_configs_stay_inside() -> None:
    """docs/commands.md lists each key's range as the code has it, and every study in configs/ loads."""
    docs = (ROOT / "docs" / "commands.md").read_text()
    for key, (low, high, _) in RANGES.items():
        row = re.search(rf"^\s*\| `{re.escape(key)}` \| (\S+) \| (\S+) \|", docs, re.M)
        assert row, f"{key} is not in the range table of docs/commands.md"
        assert (float(row.group(1)), float(row.group(2))) == (low, high), key
    from fedhealth.data.study_file import load_config
    from fedhealth.study.policy import SitePolicy

    for study in sorted((ROOT / "configs").glob("*.toml")):
        load_config(study)  # raises ConfigError if a range refuses an honest study
    for policy in sorted((ROOT / "configs").rglob("*policy*.toml")):
        SitePolicy.from_file(policy)


def test_a_range_message_names_key_value_reason_and_range() -> None:
    from fedhealth.data.study_file import load_config
    from fedhealth.study.config import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(SMOKE, ["privacy.mode=record", "privacy.target_epsilon=1e300"])
    assert re.search(r"privacy\.target_epsilon = 1e\+300: .*calibration.*; give a value between 0\.01 and 100$",
                     str(err.value))


def test_nested_ledger_is_named_by_the_hospitals_own_check(tmp_path: Path) -> None:
    """The hospital's own reader (used before every charge) names the file too: one reader, one message."""
    from fedhealth.privacy.ledger import ledger_standing

    path = tmp_path / "ledger.json"
    path.write_text(DEEP_JSON)
    standing = ledger_standing(path, "a", 1e-5)
    assert standing.status == "unreadable" and str(path) in standing.problem and "nested" in standing.problem
    path.write_text(json.dumps([]))
    assert ledger_standing(path, "a", 1e-5).status == "unreadable"


def test_the_toy_schema_columns_are_what_the_headerless_message_lists(tmp_path: Path) -> None:
    """The headerless message names the schema's columns (from the schema), never the file's first line."""
    from fedhealth.data.validation import check_hospital_file
    from fedhealth.study.schema import load_schema

    (tmp_path / "schema.toml").write_text(TOY_SCHEMA)
    headerless(tmp_path)
    records = check_hospital_file(tmp_path / "data" / "toy.csv", load_schema(tmp_path / "schema.toml"))
    (error,) = records.report.errors
    assert error.startswith("the first line holds none of the schema's columns (age, glucose, smoker, stage, "
                            "outcome, consent)")
