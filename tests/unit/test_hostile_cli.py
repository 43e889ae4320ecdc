"""Hostile inputs against the error path, the name rule and the no-overwrite rule (issue 16, items 1-3):
names that would become paths (`../x`, `.hidden`, a newline, a terminal escape, 200 characters), outputs
onto inputs, existing targets without --force, a missing output folder, a header that repeats a column,
and an unexpected exception (one line, no locals; the traceback only under --debug).

Every case runs in this process through the harness (tests/hostile.py): exit code, a message naming the
fault, no traceback, no planted patient value, nothing changed outside `out/`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile import SENTINELS, Hostile, check, write_hospital

ESC = "\x1b[31m"


def _study(ws: Path, hospital: str = "H1", name: str = "s") -> Path:
    """A generated three-hospital study whose first hospital (or the study) has the name given, written as
    TOML escapes (so a newline or ESC arrives in the name exactly)."""
    def toml(text: str) -> str:
        return '"' + "".join(c if c.isalnum() or c in "-_./ " else f"\\u{ord(c):04x}" for c in text) + '"'

    path = ws / "study.toml"
    path.write_text(f"name = {toml(name)}\nseed = 1\n"
                    + "".join(f'[[hospitals]]\nname = {toml(h)}\ntier = "tertiary"\nregion = "north"\nrecords = 60\n'
                              for h in (hospital, "H2", "H3")))
    return path


def _files_study(ws: Path, repeat: str = " age") -> Path:
    """A file study whose one hospital's header repeats `age` (` age`: a leading space; or `age` exactly)."""
    source = write_hospital(ws / "data")
    lines = source.read_text().splitlines()
    lines[0] = lines[0].replace("note", repeat)
    (ws / "data" / "dup.csv").write_text("\n".join(lines) + "\n")
    path = ws / "files.toml"
    path.write_text('name = "dup"\nschema = "data/schema.toml"\n[[hospitals]]\nname = "A"\ndata = "data/dup.csv"\n'
                    '[[hospitals]]\nname = "B"\ndata = "data/toy.csv"\n')
    return path


def _no_escape(ws: Path, output: str) -> None:
    assert "\x1b" not in output, "a raw terminal escape reached the terminal"


def _json_target(ws: Path) -> None:
    write_hospital(ws)
    (ws / "out").mkdir()
    (ws / "out" / "report.json").write_text("{}\n")


def _run_with_report(ws: Path) -> None:
    (ws / "out" / "run").mkdir(parents=True)
    (ws / "out" / "run" / "report.html").write_text("<html>the report the operator annotated</html>")


def _fab(ws: Path) -> None:
    (ws / "out").mkdir()
    (ws / "out" / "app.fab").write_bytes(b"PK not really a fab")
    (ws / "key").write_text("not a key")


def _synth_existing(ws: Path) -> None:
    _study(ws)
    (ws / "out").mkdir()
    (ws / "out" / "H1.csv").write_text("a hospital's own file\n")


def _config_in_out(ws: Path) -> None:
    (ws / "cfg").mkdir()
    _study(ws, name="s")
    (ws / "study.toml").rename(ws / "cfg" / "s-files.toml")


def _with(*steps):
    """A setup of several steps (each a function of the workspace)."""
    def setup(ws: Path) -> None:
        for step in steps:
            step(ws)
    return setup


def _named(hospital: str = "H1", name: str = "s"):
    return lambda ws: _study(ws, hospital, name)


STUDY = "study.toml"


def _in(ws: Path, *parts: str) -> str:
    return str(ws.joinpath(*parts))


CASES = [
    # -- names that become file names (item 2) --
    Hostile("simulate hospital ../x", lambda ws: ["simulate", "-c", _in(ws, STUDY), "--out", _in(ws, "out", "run")],
            2, names=("hospitals.0.name", "'/'"), setup=_named("../x")),
    Hostile("simulate hospital .hidden", lambda ws: ["simulate", "-c", _in(ws, STUDY)], 2,
            names=("hospitals.0.name", "cannot start with '.'"), setup=_named(".hidden")),
    Hostile("simulate hospital with a newline", lambda ws: ["simulate", "-c", _in(ws, STUDY)], 2,
            names=("hospitals.0.name", "'\\n'"), setup=_named("a\nforged: ok"),
            extra=lambda ws, out: _one_error_line(out)),
    Hostile("simulate hospital with ESC", lambda ws: ["simulate", "-c", _in(ws, STUDY)], 2,
            names=("hospitals.0.name", "'\\x1b'"), setup=_named(f"{ESC}red"), extra=_no_escape),
    Hostile("simulate study name of 200 characters", lambda ws: ["simulate", "-c", _in(ws, STUDY)], 2,
            names=("name", "200 characters", "at most 64"), setup=_named(name="s" * 200)),
    Hostile("synth hospital ../x", lambda ws: ["synth", "-c", _in(ws, STUDY), "--out", _in(ws, "out")], 2,
            names=("hospitals.0.name",), setup=_named("../x")),
    Hostile("certs hospital-keys ../x", lambda ws: ["certs", "hospital-keys", "--out", _in(ws, "out", "keys"),
                                                    "--hospital", "../x"], 2, names=("--hospital", "'/'")),
    Hostile("certs hospital-keys ESC", lambda ws: ["certs", "hospital-keys", "--out", _in(ws, "out", "keys"),
                                                   "--hospital", f"{ESC}H1"], 2, names=("--hospital", "'\\x1b'"),
            extra=_no_escape),
    Hostile("app approve hospital .hidden", lambda ws: ["app", "approve", _in(ws, "out", "app.fab"), "--key",
                                                        _in(ws, "key"), "--sha256", "0" * 64, "--out",
                                                        _in(ws, "out", "sig.json"), "--hospital", ".hidden"],
            2, names=("--hospital", "cannot start with '.'"), setup=_fab),
    Hostile("deploy node-config hospital-name ../x", ["deploy", "node-config", "hospital-name=../x",
                                                      "data-file=/srv/site.csv"], 2,
            names=("hospital-name", "'/'")),
    Hostile("status of a path with ESC", lambda ws: ["status", _in(ws, f"{ESC}run")], 2, names=("\\x1b",),
            extra=_no_escape),
    # -- the duplicate column and the missing folder (item 1's two triggers, fixed at the root) --
    Hostile("validate header repeats age", lambda ws: ["validate", "--schema", _in(ws, "data", "schema.toml"),
                                                       "--data", _in(ws, "data", "dup.csv")],
            1, names=("'age'", "more than once"), setup=_files_study),
    Hostile("simulate header repeats age", lambda ws: ["simulate", "-c", _in(ws, "files.toml"), "--out",
                                                       _in(ws, "out", "run")], 2,
            names=("dup.csv", "'age'", "more than once"), setup=_files_study),
    Hostile("validate header repeats age exactly", lambda ws: ["validate", "--schema", _in(ws, "data", "schema.toml"),
                                                               "--data", _in(ws, "data", "dup.csv")],
            1, names=("'age'", "more than once"), setup=lambda ws: _files_study(ws, "age")),
    Hostile("simulate header repeats age exactly", lambda ws: ["simulate", "-c", _in(ws, "files.toml"), "--out",
                                                               _in(ws, "out", "run")], 2,
            names=("dup.csv", "'age'", "more than once"), setup=lambda ws: _files_study(ws, "age")),
    Hostile("validate --json into a missing folder", lambda ws: ["validate", "--schema", _in(ws, "schema.toml"),
                                                                 "--data", _in(ws, "toy.csv"), "--json",
                                                                 _in(ws, "out", "nope", "r.json")], 2,
            names=("does not exist",), setup=write_hospital),
    # -- nothing overwritten unless asked (item 3) --
    Hostile("validate --json onto its data file", lambda ws: ["validate", "--schema", _in(ws, "schema.toml"),
                                                              "--data", _in(ws, "toy.csv"), "--json",
                                                              _in(ws, "toy.csv"), "--force"], 2,
            names=("also an input", "toy.csv"), setup=write_hospital),
    Hostile("validate --json onto the schema", lambda ws: ["validate", "--schema", _in(ws, "schema.toml"),
                                                           "--data", _in(ws, "toy.csv"), "--json",
                                                           _in(ws, "schema.toml")], 2,
            names=("also an input",), setup=write_hospital),
    Hostile("validate --json onto an existing file", lambda ws: ["validate", "--schema", _in(ws, "schema.toml"),
                                                                 "--data", _in(ws, "toy.csv"), "--json",
                                                                 _in(ws, "out", "report.json")], 2,
            names=("exists", "--force"), setup=_json_target, allowed=()),
    Hostile("validate --json --force replaces it", lambda ws: ["validate", "--schema", _in(ws, "schema.toml"),
                                                               "--data", _in(ws, "toy.csv"), "--json",
                                                               _in(ws, "out", "report.json"), "--force"], 0,
            names=("usable",), setup=_json_target,
            extra=lambda ws, out: _json_holds_report(ws / "out" / "report.json")),
    Hostile("synth onto existing hospital files", lambda ws: ["synth", "-c", _in(ws, STUDY), "--out", _in(ws, "out")],
            2, names=("H1.csv", "--force"), setup=_synth_existing, allowed=()),
    Hostile("synth config onto the config it reads", lambda ws: ["synth", "-c", _in(ws, "cfg", "s-files.toml"),
                                                                 "--out", _in(ws, "cfg"), "--force"], 2,
            names=("also an input",), setup=_config_in_out),
    Hostile("synth --out is a file", lambda ws: ["synth", "-c", _in(ws, STUDY), "--out", _in(ws, STUDY)], 2,
            names=("not a folder",), setup=_named()),
    Hostile("report over an existing report", lambda ws: ["report", _in(ws, "out", "run")], 2,
            names=("report.html", "--force"), setup=_run_with_report, allowed=()),
    Hostile("simulate into a non-empty --out", lambda ws: ["simulate", "-c", _in(ws, STUDY), "--out",
                                                           _in(ws, "out", "run")], 2,
            names=("not empty",), setup=_with(_named(), _run_with_report), allowed=()),
    Hostile("sweep into a non-empty --out", lambda ws: ["sweep", "-c", _in(ws, STUDY), "--out",
                                                        _in(ws, "out", "run")], 2,
            names=("not empty",), setup=_with(_named(), _run_with_report), allowed=()),
    Hostile("fairness into a non-empty --out", lambda ws: ["fairness", "-c", _in(ws, STUDY), "--out",
                                                           _in(ws, "out", "run")], 2,
            names=("not empty",), setup=_with(_named(), _run_with_report), allowed=()),
    Hostile("contribution into a non-empty --out", lambda ws: ["contribution", "-c", _in(ws, STUDY), "--budget", "3",
                                                               "--out", _in(ws, "out", "run")], 2,
            names=("not empty",), setup=_with(_named(), _run_with_report), allowed=()),
    Hostile("contribution over a run's contribution.json",
            lambda ws: ["contribution", "-c", _in(ws, STUDY), "--budget", "3", "--out", _in(ws, "out", "new"),
                        "--report-into", _in(ws, "out", "run")], 2, names=("contribution.json", "--force"),
            setup=_with(_named(), _run_with_report, lambda ws: (ws / "out" / "run" / "contribution.json").write_text(
                "{}")), allowed=()),
    Hostile("app approve --out onto the FAB", lambda ws: ["app", "approve", _in(ws, "out", "app.fab"), "--key",
                                                          _in(ws, "key"), "--sha256", "0" * 64, "--out",
                                                          _in(ws, "out", "app.fab"), "--hospital", "H1", "--force"],
            2, names=("also an input",), setup=_fab, allowed=()),
    Hostile("app build onto an existing FAB", lambda ws: ["app", "build", "--out", _in(ws, "out", "app.fab")], 2,
            names=("exists", "--force"), setup=_fab, allowed=()),
    # -- the two triggers as a user meets them: a real process, no traceback --
    Hostile("validate --json into a missing folder, a real process",
            lambda ws: ["validate", "--schema", _in(ws, "schema.toml"), "--data", _in(ws, "toy.csv"), "--json",
                        _in(ws, "out", "nope", "r.json")], 2, names=("does not exist",), setup=write_hospital,
            subprocess=True),
    Hostile("validate header repeats age, a real process",
            lambda ws: ["validate", "--schema", _in(ws, "data", "schema.toml"), "--data", _in(ws, "data", "dup.csv")],
            1, names=("'age'", "more than once"), setup=_files_study, subprocess=True),
    Hostile("audit verify a missing log", lambda ws: ["audit", "verify", _in(ws, "nope.jsonl")], 2,
            names=("nope.jsonl", "not found")),
]


def _one_error_line(output: str) -> None:
    """A newline in a name must not forge a second line of output."""
    assert "forged: ok" not in output.splitlines()
    assert not any(line.startswith("forged") for line in output.splitlines())


def _json_holds_report(path: Path) -> None:
    import json

    assert json.loads(path.read_text())["files"][0]["rows"] == 40


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_cli(case: Hostile, tmp_path: Path) -> None:
    check(case, tmp_path)


# -- the error path for what no command expected --


def _explode(*args, **kwargs):
    raise AttributeError(f"'DataFrame' object has no attribute 'dtype' near {SENTINELS[0]}")


def _validate_args(ws: Path) -> list[str]:
    return ["validate", "--schema", str(ws / "schema.toml"), "--data", str(ws / "toy.csv")]


def test_an_unexpected_error_is_one_line_without_its_text(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr("fedhealth.data.validation.validate_table", _explode)
    output = check(Hostile("unexpected", _validate_args, 1, names=("fedhealth validate", "AttributeError",
                                                                  "rerun with --debug"),
                           setup=lambda ws: write_hospital(ws)), tmp_path)
    assert len([line for line in output.splitlines() if line.strip()]) == 1, output
    assert "dtype" not in output  # the exception's text is never shown: it may quote a cell


def test_debug_shows_the_traceback_without_locals(monkeypatch, tmp_path: Path) -> None:
    def explode(*args, **kwargs):
        raise AttributeError("no attribute 'dtype'")

    monkeypatch.setattr("fedhealth.data.validation.validate_table", explode)
    output = check(Hostile("debug", lambda ws: ["--debug", *_validate_args(ws)], 1,
                           names=("Traceback", "AttributeError: no attribute 'dtype'", "fedhealth validate"),
                           setup=lambda ws: write_hospital(ws)), tmp_path)
    assert "locals" not in output and "frame = " not in output  # frames and lines, never local variables


def test_fedhealth_debug_in_the_environment_is_debug(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr("fedhealth.data.validation.validate_table", _explode)
    monkeypatch.setenv("FEDHEALTH_DEBUG", "1")
    from tests.support import invoke_cli

    write_hospital(tmp_path)
    result = invoke_cli(*_validate_args(tmp_path))
    assert result.exit_code == 1 and "Traceback" in result.output


def test_an_interrupt_exits_130(monkeypatch, tmp_path: Path) -> None:
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("fedhealth.data.validation.validate_table", interrupt)
    check(Hostile("interrupt", _validate_args, 130, names=("interrupted",), setup=lambda ws: write_hospital(ws)),
          tmp_path)


def test_a_fedhealth_error_no_command_caught_prints_its_message(monkeypatch, tmp_path: Path) -> None:
    from fedhealth.errors import DataError

    def refuse(*args, **kwargs):
        raise DataError("toy.csv: column 'age' cannot be used")

    monkeypatch.setattr("fedhealth.data.validation.validate_table", refuse)
    check(Hostile("fedhealth error", _validate_args, 2, names=("column 'age' cannot be used",),
                  setup=lambda ws: write_hospital(ws)), tmp_path)


# -- the helpers under the rules --


def test_inside_keeps_a_path_in_its_folder(tmp_path: Path) -> None:
    from fedhealth.durable import PathEscapeError, inside

    assert inside(tmp_path, "H1.json") == tmp_path / "H1.json"
    assert inside(tmp_path, "privacy", "H1.json") == tmp_path / "privacy" / "H1.json"
    for hostile in ("../x.json", "/etc/passwd", "a/../../x", "..", "", "."):
        with pytest.raises(PathEscapeError, match="outside this folder"):
            inside(tmp_path, hostile)


def test_inside_refuses_a_link_that_leads_out(tmp_path: Path) -> None:
    from fedhealth.durable import PathEscapeError, inside

    (tmp_path / "run").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run" / "privacy").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PathEscapeError):
        inside(tmp_path / "run", "privacy/H1.json")
    assert inside(tmp_path / "run" / "privacy", "H1.json")  # the folder itself may be a link


def test_inside_escapes_what_it_quotes(tmp_path: Path) -> None:
    from fedhealth.durable import PathEscapeError, inside

    with pytest.raises(PathEscapeError) as refused:
        inside(tmp_path, f"../{ESC}x")
    assert "\x1b" not in str(refused.value) and "\\x1b" in str(refused.value)


def test_a_run_directory_refuses_a_hospital_file_outside_it(tmp_path: Path) -> None:
    from fedhealth.durable import PathEscapeError
    from fedhealth.runs import rundir

    assert rundir.hospital_file(tmp_path, rundir.PRIVACY_DIR, "H1", ".json") == tmp_path / "privacy" / "H1.json"
    with pytest.raises(PathEscapeError):
        rundir.hospital_file(tmp_path, rundir.AUDIT_DIR, "../../x", ".jsonl")


def test_synth_export_refuses_a_name_that_escapes(tmp_path: Path) -> None:
    """The belt under the config's rule: a config built without validation still cannot write outside --out."""
    from fedhealth.data.export import study_files
    from fedhealth.durable import PathEscapeError
    from fedhealth.study.config import HospitalConfig, StudyConfig

    cfg = StudyConfig.model_construct(name="s", hospitals=[HospitalConfig.model_construct(name="../x")])
    with pytest.raises(PathEscapeError):
        study_files(cfg, tmp_path / "out")


@pytest.mark.parametrize("name", ["../x", ".hidden", "a\nb", f"{ESC}x", "x" * 65, "", "a b", "é", "-x", "_x"])
def test_the_name_rule_refuses(name: str) -> None:
    from fedhealth.study.names import name_problem

    problem = name_problem(name)
    assert problem is not None and "\x1b" not in problem and "\n" not in problem


def test_the_name_rule_accepts_plain_names() -> None:
    from fedhealth.study.names import name_problem

    for name in ("H1", "H001-tert-north", "st.mary_2", "x" * 64):
        assert name_problem(name) is None


def test_a_node_config_hospital_name_follows_the_rule() -> None:
    from fedhealth.hospital.node_config import NodeConfigError, NodeSettings

    with pytest.raises(NodeConfigError, match="hospital-name"):
        NodeSettings.from_node_config({"hospital-name": "../x"})
    assert NodeSettings.from_node_config({"hospital-name": "H1"}).hospital_name == "H1"


def test_a_sibling_study_may_pass_the_length_of_a_users_name() -> None:
    from fedhealth.study.config import variant, without_privacy
    from tests.support import smoke

    cfg = smoke(f'name="{"s" * 64}"')
    assert without_privacy(variant(cfg, cfg.name + "-eps-0.5")).name.startswith("s" * 64)


def test_terminal_safe_writes_out_control_characters() -> None:
    from fedhealth.errors import terminal_safe

    assert terminal_safe(f"a{ESC}b\nc\x9b") == "a\\x1b[31mb\\x0ac\\x9b"
    assert terminal_safe("a\nb", keep_newlines=True) == "a\nb"


def test_a_table_pandas_cannot_check_names_the_file_not_the_cell(tmp_path: Path) -> None:
    """A Parquet column can hold what pandas cannot compare (lists); its error would quote the cell."""
    from fedhealth.data.validation import DataFileError, validate_table
    from fedhealth.study.schema import load_schema
    from tests.hostile import plant
    from tests.support import toy_frame

    write_hospital(tmp_path)
    frame = plant(toy_frame())
    frame["stage"] = [[SENTINELS[2], i] for i in range(len(frame))]
    with pytest.raises(DataFileError) as refused:
        validate_table(frame, load_schema(tmp_path / "schema.toml"), "site.parquet")
    assert "site.parquet" in str(refused.value) and "stage" in str(refused.value)
    assert not any(value in str(refused.value) for value in SENTINELS)


@pytest.mark.parametrize("label", [f"{ESC}tertiary", "north\nforged line"])
def test_a_free_label_cannot_carry_a_control_character(label: str) -> None:
    from fedhealth.study.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="cannot be printed") as refused:
        parse_config({"name": "s", "hospitals": [{"name": "A", "tier": label, "records": 60}]})
    assert "\x1b" not in str(refused.value) and "forged line" not in str(refused.value).splitlines()
