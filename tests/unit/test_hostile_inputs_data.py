"""Hostile numbers and hostile data files (issue 16, items 5, 8, 9 and 11), through the commands a user runs.

Every number means what it says (inf and nan refused in every kind of float key, resources within the
machine, a delta and a test fraction that the hospitals' records can carry), a data file that is not a
regular file or is too large is refused before it is read, and `validate` and `simulate` give one file the
same verdict in the same words. Each case runs through the hostile-input harness (`tests/hostile.py`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.hostile import Hostile, check, plant, write_hospital
from tests.support import SMOKE, TOY_SCHEMA, invoke_cli, toy_frame

CORES = str(os.cpu_count() or 1)
RECORD = ["--set", "privacy.mode=record", "--set", "privacy.noise_multiplier=1.0"]
HOSPITAL = ["--set", "privacy.mode=hospital", "--set", "privacy.noise_multiplier=1.0",
            "--set", "federation.strategy.name=fedavg"]


def smoke(*sets: str, extra: tuple[str, ...] = ()):
    """`fedhealth simulate` of the smoke study with `--set` overrides, into the workspace's out/."""
    def args(ws: Path) -> list[str]:
        return ["simulate", "-c", str(SMOKE), "--out", str(ws / "out"),
                *[a for s in sets for a in ("--set", s)], *extra]
    return args


def file_study(ws: Path, bad: str = "b.csv") -> Path:
    """A study of three file hospitals (a, b, c) in ws/data; hospital b reads `bad`."""
    data = ws / "data"
    for name, seed in (("a", 1), ("c", 3)):
        write_hospital(data, f"{name}.csv", n=60, seed=seed)
    if not (data / bad).exists() and not (data / bad).is_symlink():
        write_hospital(data, bad, n=60, seed=2)
    study = ws / "study.toml"
    study.write_text(f'name = "files"\nschema = "{data / "schema.toml"}"\n[model]\nname = "logreg"\n'
                     f'[federation]\nrounds = 1\n'
                     + "".join(f'[[hospitals]]\nname = "{n}"\ndata = "{data / f}"\n'
                               for n, f in (("a", "a.csv"), ("b", bad), ("c", "c.csv"))))
    return study


def simulate_files(ws: Path) -> list[str]:
    return ["simulate", "-c", str(ws / "study.toml"), "--out", str(ws / "out")]


def with_study(setup, bad: str):
    """`setup`, then the three-hospital study whose hospital b reads `bad` (laid out before the harness
    takes its snapshot of the workspace)."""
    def both(ws: Path) -> None:
        setup(ws)
        file_study(ws, bad)
    return both


def validate(name: str, *extra: str):
    return lambda ws: ["validate", "--schema", str(ws / "data" / "schema.toml"), "--data", str(ws / "data" / name),
                       *extra]


def schema_only(ws: Path) -> None:
    (ws / "data").mkdir(parents=True, exist_ok=True)
    (ws / "data" / "schema.toml").write_text(TOY_SCHEMA)


def fifo(ws: Path) -> None:
    schema_only(ws)
    os.mkfifo(ws / "data" / "pipe.csv")


def dev_zero(ws: Path) -> None:
    schema_only(ws)
    (ws / "data" / "zero.csv").symlink_to("/dev/zero")


def one_class(ws: Path) -> None:
    schema_only(ws)
    plant(toy_frame(40, 5)).assign(outcome="yes").to_csv(ws / "data" / "oneclass.csv", index=False)


def one_row(ws: Path) -> None:
    schema_only(ws)
    plant(toy_frame(2, 5)).iloc[:1].to_csv(ws / "data" / "onerow.csv", index=False)


def latin1(ws: Path) -> None:
    text = SMOKE.read_text(encoding="utf-8").replace('name = "smoke"', 'name = "smoke" # Universit\xe9', 1)
    (ws / "latin1.toml").write_bytes(text.encode("latin-1"))


def big(ws: Path) -> None:
    write_hospital(ws / "data", "big.csv", n=60)


NOT_FINITE = "not a finite number"
CASES = [
    # -- inf and nan in every kind of float key (item 5): the reason is that the number is not finite
    Hostile("nan-learning-rate", smoke("training.learning_rate=nan"), 2, ("training.learning_rate", NOT_FINITE)),
    Hostile("inf-weight-decay", smoke("training.weight_decay=inf"), 2, ("training.weight_decay", NOT_FINITE)),
    Hostile("nan-momentum", smoke("training.momentum=nan"), 2, ("training.momentum", NOT_FINITE)),
    Hostile("inf-test-fraction", smoke("training.test_fraction=-inf"), 2, ("training.test_fraction", NOT_FINITE)),
    Hostile("inf-target-epsilon", smoke("privacy.mode=record", "privacy.target_epsilon=inf"), 2,
            ("privacy.target_epsilon", NOT_FINITE)),
    Hostile("inf-noise-multiplier", smoke("privacy.mode=record", "privacy.noise_multiplier=inf"), 2,
            ("privacy.noise_multiplier", NOT_FINITE)),
    Hostile("inf-max-grad-norm", smoke("privacy.max_grad_norm=inf", extra=tuple(RECORD)), 2,
            ("privacy.max_grad_norm", NOT_FINITE)),
    Hostile("nan-clipping-norm", smoke("privacy.clipping_norm=nan", extra=tuple(HOSPITAL)), 2,
            ("privacy.clipping_norm", NOT_FINITE)),
    Hostile("inf-max-epsilon", smoke("privacy.max_epsilon=inf", extra=tuple(RECORD)), 2,
            ("privacy.max_epsilon", NOT_FINITE)),
    Hostile("nan-delta", smoke("privacy.delta=nan", extra=tuple(RECORD)), 2, ("privacy.delta", NOT_FINITE)),
    Hostile("inf-secagg-update-bound", smoke("federation.secure_aggregation.update_bound=inf"), 2,
            ("federation.secure_aggregation.update_bound", NOT_FINITE)),
    Hostile("inf-secagg-timeout", smoke("federation.secure_aggregation.timeout=inf"), 2,
            ("federation.secure_aggregation.timeout", NOT_FINITE)),
    Hostile("nan-fedprox-mu", smoke("federation.strategy.name=fedprox", "federation.strategy.proximal_mu=nan"), 2,
            ("federation.strategy.proximal_mu", NOT_FINITE)),
    Hostile("inf-wait-for-hospitals", smoke("federation.wait_for_hospitals=inf"), 2,
            ("federation.wait_for_hospitals", NOT_FINITE)),
    Hostile("nan-schema-bound", lambda ws: ["validate", "--schema", str(ws / "nan-schema.toml"), "--data",
                                            str(ws / "data" / "toy.csv")], 2, ("columns.0.max", NOT_FINITE),
            setup=lambda ws: (write_hospital(ws / "data"),
                              (ws / "nan-schema.toml").write_text(TOY_SCHEMA.replace("max = 100", "max = nan")))),
    Hostile("inf-site-policy-cap", lambda ws: ["budget", str(ws / "ledger.json"), "--policy", str(ws / "policy.toml")],
            2, ("policy.toml", "max_epsilon", NOT_FINITE),
            setup=lambda ws: ((ws / "ledger.json").write_text("{}"),
                              (ws / "policy.toml").write_text("max_epsilon = inf\n"))),
    # -- resources within the machine
    Hostile("cpus-per-client-above-the-machine", smoke("federation.cpus_per_client=100000"), 2,
            ("federation.cpus_per_client", "100000", f"{CORES} CPU cores")),
    # -- what the hospitals' records can carry (known once the splits are built, before any training)
    Hostile("delta-too-large", smoke("privacy.delta=0.9", extra=tuple(RECORD)), 2,
            ("privacy.delta = 0.9", "village-clinic", "226 training records", "allow_large_delta")),
    Hostile("delta-too-large-hospital-level", smoke("privacy.delta=0.5", extra=tuple(HOSPITAL)), 2,
            ("privacy.delta = 0.5", "3 hospitals", "allow_large_delta")),
    Hostile("test-fraction-leaves-too-few", smoke("training.test_fraction=0.999"), 2,
            ("village-clinic", "training.test_fraction = 0.999", "2 training records")),
    Hostile("test-fraction-through-sweep", lambda ws: ["sweep", "-c", str(SMOKE), "--epsilon", "1", "--out",
                                                       str(ws / "out"), "--set", "training.test_fraction=0.999"], 2,
            ("village-clinic", "training.test_fraction = 0.999")),
    Hostile("delta-through-contribution", lambda ws: ["contribution", "-c", str(SMOKE), "--budget", "3", "--out",
                                                      str(ws / "out"), *RECORD, "--set", "privacy.delta=0.5"], 2,
            ("privacy.delta = 0.5", "allow_large_delta")),
    # -- a config file that is not UTF-8: the file and the byte, no traceback
    Hostile("latin1-config", lambda ws: ["simulate", "-c", str(ws / "latin1.toml"), "--out", str(ws / "out")], 2,
            ("latin1.toml", "byte offset", "(line 2)", "UTF-8"), setup=latin1),
    # -- special files, refused before they are opened (item 9)
    Hostile("fifo-csv-validate", validate("pipe.csv"), 2, ("pipe.csv", "FIFO", "not a regular file"), setup=fifo),
    Hostile("fifo-csv-simulate", simulate_files, 2, ("pipe.csv", "FIFO"), setup=with_study(fifo, "pipe.csv")),
    Hostile("dev-zero-link-validate", validate("zero.csv"), 2, ("zero.csv", "character device", "/dev/zero"),
            setup=dev_zero),
    Hostile("dev-zero-link-simulate", simulate_files, 2, ("zero.csv", "character device"),
            setup=with_study(dev_zero, "zero.csv")),
    Hostile("over-the-size-limit", validate("big.csv", "--max-bytes", "100"), 2,
            ("big.csv", "size limit of 100 bytes", "--max-bytes"), setup=big),
    # -- validate and simulate: one verdict (item 8)
    # a site with one class is usable (issue 18): a warning, no patient value; the study trains it
    # (tests/integration/test_real_data_federation.py)
    Hostile("one-class-validate", validate("oneclass.csv"), 0,
            ("40 positive and 0 negative", "trains with the federation", "undefined", "share_evaluation = false"),
            setup=one_class),
    Hostile("one-row-validate", validate("onerow.csv"), 1, ("1 rows", "usable rows", "NOT usable"), setup=one_row),
    Hostile("one-row-simulate", simulate_files, 2, ("hospital 'b'", "1 rows", "usable rows"),
            setup=with_study(one_row, "onerow.csv")),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_numbers_and_data_files(case: Hostile, tmp_path: Path) -> None:
    check(case, tmp_path)


@pytest.mark.parametrize("setup, name", [(one_row, "onerow.csv")])
def test_validate_and_simulate_refuse_a_file_in_the_same_words(tmp_path: Path, setup, name: str) -> None:
    """The deployment pre-flight runs `validate`: what it accepts must be what training accepts, and the
    hospital reads the same reason from both."""
    setup(tmp_path)
    checked = invoke_cli("validate", "--schema", str(tmp_path / "data" / "schema.toml"),
                         "--data", str(tmp_path / "data" / name))
    loaded = invoke_cli("simulate", "-c", str(file_study(tmp_path, name)), "--out", str(tmp_path / "out"))
    assert (checked.exit_code, loaded.exit_code) == (1, 2), (checked.output, loaded.output)
    reasons = [line.strip().removeprefix("error: ") for line in checked.output.splitlines()
               if line.strip().startswith("error: ")]
    assert reasons and all(reason in loaded.output for reason in reasons), (checked.output, loaded.output)


def test_a_usable_file_passes_both(tmp_path: Path) -> None:
    """The same check does not refuse a good file: validate exits 0 and the study loads (the control case)."""
    from fedhealth.data.study_file import load_config

    schema_only(tmp_path)
    study = file_study(tmp_path)
    checked = invoke_cli("validate", "--schema", str(tmp_path / "data" / "schema.toml"),
                         "--data", str(tmp_path / "data" / "b.csv"))
    assert checked.exit_code == 0 and "usable" in checked.output
    assert [h.records for h in load_config(study).hospitals] == [60, 60, 60]


def test_a_one_class_file_passes_both_with_the_same_warning(tmp_path: Path) -> None:
    """A site whose rows hold one class is not refused (issue 18: it can still teach the federated model):
    validate accepts it with a warning, and the study loads it and names it in the same words."""
    from fedhealth.data.study_file import load_config

    one_class(tmp_path)
    checked = invoke_cli("validate", "--schema", str(tmp_path / "data" / "schema.toml"),
                         "--data", str(tmp_path / "data" / "oneclass.csv"))
    assert checked.exit_code == 0 and "40 positive and 0 negative usable rows" in checked.output, checked.output
    cfg = load_config(file_study(tmp_path, "oneclass.csv"))
    assert [h.records for h in cfg.hospitals] == [60, 40, 60]


def test_the_size_limit_comes_from_the_environment_when_no_option_is_given(tmp_path: Path, monkeypatch) -> None:
    big(tmp_path)
    monkeypatch.setenv("FEDHEALTH_MAX_DATA_BYTES", "100")
    result = invoke_cli("validate", "--schema", str(tmp_path / "data" / "schema.toml"),
                        "--data", str(tmp_path / "data" / "big.csv"))
    assert result.exit_code == 2 and "size limit of 100 bytes" in result.output, result.output
    monkeypatch.setenv("FEDHEALTH_MAX_DATA_BYTES", "lots")
    result = invoke_cli("validate", "--schema", str(tmp_path / "data" / "schema.toml"),
                        "--data", str(tmp_path / "data" / "big.csv"))
    assert result.exit_code == 2 and "FEDHEALTH_MAX_DATA_BYTES = 'lots'" in result.output, result.output


def test_a_study_in_which_no_round_aggregated_fails(tmp_path: Path) -> None:
    """With every round declined or failed, the run must not end `completed` (exit 0) with a table for the
    untrained model: the ServerApp's last step fails it (a real federation of this: tests/integration/
    test_secagg_federation.py::test_an_aggregate_of_one_hospital_is_not_released)."""
    from fedhealth.coordinator.app import NothingAggregated, require_an_aggregate
    from fedhealth.runs import rundir

    declined = {"hospitals_aggregated": [], "declined": [{"hospital_index": 0, "reason": "its site policy"}]}
    rundir.append_jsonl(tmp_path / rundir.ROUNDS_FILE, [{"round": 1, **declined}, {"round": 2, "status": "failed",
                                                                                  "hospitals_aggregated": []}])
    with pytest.raises(NothingAggregated, match="no round of 2 aggregated.*its site policy"):
        require_an_aggregate(tmp_path)
    rundir.append_jsonl(tmp_path / rundir.ROUNDS_FILE, [{"round": 3, "hospitals_aggregated": [0, 1, 2]}])
    require_an_aggregate(tmp_path)  # one aggregated round: there is a federated model


def test_a_deployed_hospital_refuses_a_delta_too_large_for_it_at_round_one(tmp_path: Path) -> None:
    """In deployment the hospital knows its own size; without a policy file it takes the safe default
    (delta at most 1 / (10 x its training records)) and declines round 1; the study's allow_large_delta
    cannot loosen it. The decline is what its audit mod records (`decision = declined: ...`)."""
    from types import SimpleNamespace

    from fedhealth.data.study_file import load_config
    from fedhealth.hospital.app import HospitalClient
    from fedhealth.model.initial import initial_weights
    from fedhealth.wire import DECLINED_KEY, SECURE_KEY, study_payload

    cfg = load_config(SMOKE, ["privacy.mode=record", "privacy.noise_multiplier=1.0", "privacy.delta=0.01",
                              "privacy.allow_large_delta=true"])
    client = HospitalClient(SimpleNamespace(node_config={"hospital-name": "village-clinic"}),
                            ledger_dir=str(tmp_path / "ledger"))
    weights = initial_weights(cfg)
    _, n, metrics = client.fit(weights, study_payload(cfg, 1, "") | {SECURE_KEY: True})
    assert n == 0 and "delta is above the largest delta the site policy accepts" in metrics[DECLINED_KEY]
    assert not (tmp_path / "ledger" / "village-clinic.json").exists()  # refused before anything is charged


def test_a_deployed_hospital_refuses_a_test_fraction_that_leaves_it_too_few_records(tmp_path: Path) -> None:
    """The same rule where the split is made, so a hospital the coordinator's check never saw (deployment,
    `flwr run`) refuses at its first round; its guard sends the server the error's category only."""
    from types import SimpleNamespace

    from fedhealth.data.study_file import load_config
    from fedhealth.hospital.app import HospitalClient
    from fedhealth.model.initial import initial_weights
    from fedhealth.study.config import ConfigError
    from fedhealth.wire import SECURE_KEY, study_payload

    cfg = load_config(SMOKE, ["training.test_fraction=0.999"])
    client = HospitalClient(SimpleNamespace(node_config={"hospital-name": "county-secondary"}),
                            ledger_dir=str(tmp_path / "ledger"))
    with pytest.raises(ConfigError, match="'county-secondary'.* leaves it 2 training records of its 700"):
        client.fit(initial_weights(cfg), study_payload(cfg, 1, "") | {SECURE_KEY: True})
