"""The NCCTG lung cancer example data (configs/data/lung/): the raw file is the recorded lifelines copy, and the
per-institution site CSVs are exactly its rows, split by configs/data/lung/prepare.py, each row once."""

import csv
import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LUNG = ROOT / "configs" / "data" / "lung"
RAW = LUNG / "raw" / "lung.csv"
# lifelines/datasets/lung.csv in lifelines-0.30.3-py3-none-any.whl, as recorded in configs/data/lung/README.md
RAW_SHA256 = "16ebd02c38bbb5708186d600cff80ad84d0764974619436f83ba4a605e77eb44"
RAW_ROWS = 228
MIN_PATIENTS = 15
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def data_lines(path: Path) -> list[str]:
    header, *lines = path.read_text(encoding="ascii").splitlines()
    assert header == "inst,time,status,age,sex,ph.ecog,ph.karno,pat.karno,meal.cal,wt.loss", path
    return lines


def inst_of(line: str) -> int | None:
    cell = next(csv.reader([line]))[0]
    return None if cell == "" else int(float(cell))


def sites() -> dict[str, list[str]]:
    return {path.stem: data_lines(path) for path in sorted(LUNG.glob("*.csv"))}


def test_raw_file_is_the_recorded_lifelines_copy():
    assert hashlib.sha256(RAW.read_bytes()).hexdigest() == RAW_SHA256
    assert len(data_lines(RAW)) == RAW_ROWS
    assert RAW_SHA256 in (LUNG / "README.md").read_text(encoding="utf-8")
    assert RAW_SHA256 in (LUNG / "prepare.py").read_text(encoding="utf-8")


def test_prepare_check_passes():
    python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
    result = subprocess.run(
        [python, "configs/data/lung/prepare.py", "--check", "--tables"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    readme = (LUNG / "README.md").read_text(encoding="utf-8").splitlines()
    stale = [line for line in result.stdout.splitlines() if line and line not in readme]
    assert not stale, f"README.md tables differ from `prepare.py --tables`: {stale}"


def test_sites_hold_every_raw_row_once_in_raw_order():
    raw = data_lines(RAW)
    split = sites()
    assert "other" in split and len(split) >= 2
    assert sum(len(lines) for lines in split.values()) == RAW_ROWS
    assert Counter(line for lines in split.values() for line in lines) == Counter(raw)  # none lost or duplicated
    position = {line: i for i, line in enumerate(raw)}
    assert len(position) == RAW_ROWS  # the raw rows are distinct, so the multiset check above is a set check
    for name, lines in split.items():
        order = [position[line] for line in lines]
        assert order == sorted(order), f"{name}: rows not in the raw file's order"


def test_one_site_per_large_institution_and_the_rest_in_other():
    counts = Counter(inst_of(line) for line in data_lines(RAW))
    small = {inst for inst, n in counts.items() if inst is None or n < MIN_PATIENTS}
    large = set(counts) - small
    split = sites()
    for name, lines in split.items():
        if name == "other":
            continue
        assert len(lines) >= MIN_PATIENTS, f"{name}: {len(lines)} patients"
        insts = {inst_of(line) for line in lines}
        assert len(insts) == 1 and name == f"inst-{insts.pop():02d}", name
    assert {name for name in split if name != "other"} == {f"inst-{inst:02d}" for inst in large}
    assert {inst_of(line) for line in split["other"]} == small
    assert None in small  # the patient without an institution code is in `other`


def test_every_site_validates_against_the_time_to_event_schema():
    """The schema (configs/data/lung/schema.toml) accepts every patient of every site: follow-up in days inside
    its range, the event coded 0/1 as lifelines ships it; the file checks a hospital's client would run."""
    from fedhealth.data.validation import check_hospital_file
    from fedhealth.study.schema import load_schema

    schema = load_schema(LUNG / "schema.toml")
    assert schema.study.outcome == "time_to_event" and schema.time.column == "time"
    total, events = 0, 0
    for path in sorted(LUNG.glob("*.csv")):
        records = check_hospital_file(path, schema)
        assert records.report.ok and records.report.rejected == 0, records.report.lines()
        assert not records.report.warnings, records.report.warnings  # `inst` is read past: schema.not_inputs
        assert records.time is not None and len(records.time) == records.report.accepted
        total += records.report.accepted
        events += int(records.label.sum())
    assert (total, events) == (RAW_ROWS, 165)


def test_a_column_in_not_inputs_cannot_also_be_used(tmp_path):
    """`not_inputs` reads a column past; a column the study uses (an input, the label, the time) cannot be one."""
    import pytest

    from fedhealth.study.schema import load_schema

    text = (LUNG / "schema.toml").read_text(encoding="utf-8")
    for used in ("age", "status", "time"):
        path = tmp_path / f"{used}.toml"
        path.write_text(text.replace('not_inputs = ["inst"]', f'not_inputs = ["inst", "{used}"]'))
        with pytest.raises(ValueError, match=f"not_inputs: '{used}' is a column the study uses"):
            load_schema(path)
