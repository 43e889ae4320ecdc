"""Validation in blocks gives the report of the full read (issue 16, item 11).

`data/validation_reference.json` holds the reports (and a digest of the usable rows) that the full-read
validation (pandas read of the whole file, then the checks) gave on these inputs before validation was
streamed. The intended differences: a file with a class too small to split is now refused by
`validate` as by `simulate` (item 8), so that verdict is added to the reference where it applies; and a
header cell that is not a schema column is named by its position, not its text (it may be a record, when
the header row is missing), so the reference's warning is rewritten to positions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from fedhealth.data.validation import DataFileError, check_hospital_file, validate_table
from fedhealth.study.schema import load_schema
from tests.support import ROOT, TOY_SCHEMA, toy_frame

HEART = ROOT / "configs" / "data" / "heart-disease"
REFERENCE = json.loads((Path(__file__).parent / "data" / "validation_reference.json").read_text())
# one negative usable row under the FLamby schema: usable (issue 18: a one-class side trains), with a warning
NOW_WARNED = {"heart-schema-flamby.toml-switzerland":
              "45 positive and 1 negative usable rows, so the seeded split's test side holds one class: this site "
              "trains with the federation; its own AUROC and AUPRC are undefined (its evaluation figures then tell "
              "the coordinator that its test side holds one class; share_evaluation = false in its policy keeps "
              "them at the hospital)"}


def _bad_rows(f):
    f.loc[0, "age"] = "987654"
    f.loc[1, "glucose"] = "high"
    f.loc[2, "stage"] = "IV"
    f.loc[3, "outcome"] = "maybe"
    f.loc[4, "age"] = ""
    f.loc[5, "consent"] = "withdrawn"
    f.loc[6, "smoker"] = "2"
    return f


TOY = {
    "toy-clean": lambda f: f,
    "toy-bad-rows": _bad_rows,
    "toy-no-glucose": lambda f: f.drop(columns=["glucose"]),
    "toy-glucose-mgdl": lambda f: f.assign(glucose=(f["glucose"].astype(float) * 18).round().astype(str)),
    "toy-age-text": lambda f: f.assign(age="unknown"),
    "toy-no-consent": lambda f: f.assign(consent="no"),
    "toy-header-only": lambda f: f.iloc[:0],
    "toy-label-unnamed": lambda f: f.assign(outcome="1"),
    "toy-half-consent": lambda f: f.assign(consent=["research", "no"] * (len(f) // 2)),
    "toy-extra-column": lambda f: f.assign(ward="A"),
    "toy-glucose-mostly-missing": lambda f: f.assign(glucose=["NA"] * (len(f) - 5) + ["5.5"] * 5),
}


def _inputs(tmp_path: Path) -> list[tuple[str, Path, object]]:
    (tmp_path / "schema.toml").write_text(TOY_SCHEMA)
    toy = load_schema(tmp_path / "schema.toml")
    out = []
    for name, edit in TOY.items():
        path = tmp_path / f"{name}.csv"
        edit(toy_frame(300, 1)).to_csv(path, index=False)
        out.append((name, path, toy))
    for schema_name in ("schema.toml", "schema-flamby.toml"):
        schema = load_schema(HEART / schema_name)
        for site in ("cleveland", "hungary", "switzerland", "va_long_beach"):
            out.append((f"heart-{schema_name}-{site}", HEART / f"{site}.csv", schema))
    return out


def _digest(records) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(records.values).tobytes())
    h.update(np.ascontiguousarray(records.label.astype(np.int64)).tobytes())
    if records.is_test is not None:
        h.update(records.is_test.astype(bool).tobytes())
    return h.hexdigest()


UNKNOWN = "column(s) not in the schema, ignored: "


def _by_position(text: str, header: list[str]) -> str:
    """The reference's warning naming unknown columns, as positions in `header` (the file's first line)."""
    if not text.startswith(UNKNOWN):
        return text
    where = [header.index(n) + 1 for n in text.removeprefix(UNKNOWN).split(", ")]
    many = "1 column" if len(where) == 1 else f"{len(where)} columns"
    return f"{many} not in the schema, ignored: position{'s' if len(where) > 1 else ''} {', '.join(map(str, where))}"


def _expected(name: str, path: Path) -> tuple[dict, list[str]]:
    """The reference report of `name` (as_dict, lines), with the warning a one-class side adds and unknown columns
    named by position."""
    expected = json.loads(json.dumps(REFERENCE[name]["report"]))
    lines = list(REFERENCE[name]["lines"])
    header = [c.strip() for c in path.read_text(encoding="utf-8").splitlines()[0].split(",")]
    expected["warnings"] = [_by_position(w, header) for w in expected["warnings"]]
    lines = [("  warning: " + _by_position(li.removeprefix("  warning: "), header))
             if li.startswith("  warning: ") else li for li in lines]
    if name in NOW_WARNED:
        lines.insert(1 + len(expected["errors"]) + len(expected["warnings"]), f"  warning: {NOW_WARNED[name]}")
        expected["warnings"].append(NOW_WARNED[name])
    return expected, lines


def _report(records, path: Path):
    records.report.source = path.name  # the reference names the file only
    return records.report.as_dict(), records.report.lines()


@pytest.mark.parametrize("chunk_rows", [101, 1_000_000])
def test_blocks_of_any_size_give_the_full_read_report(tmp_path: Path, chunk_rows: int) -> None:
    for name, path, schema in _inputs(tmp_path):
        records = check_hospital_file(path, schema, chunk_rows=chunk_rows)
        report, lines = _report(records, path)
        expected, expected_lines = _expected(name, path)
        assert json.dumps(report) == json.dumps(expected), name  # the order of reasons and warnings too
        assert lines == expected_lines, name
        assert _digest(records) == REFERENCE[name]["digest"], name


def test_without_values_the_report_is_the_same(tmp_path: Path) -> None:
    """`fedhealth validate` keeps no typed values (its memory stays near one block), same verdict."""
    for name, path, schema in _inputs(tmp_path):
        light = check_hospital_file(path, schema, keep_values=False, chunk_rows=100)
        assert light.values.shape[0] == 0
        assert _report(light, path) == _expected(name, path), name


def test_a_frame_and_its_blocks_agree(tmp_path: Path) -> None:
    (tmp_path / "schema.toml").write_text(TOY_SCHEMA)
    schema = load_schema(tmp_path / "schema.toml")
    frame = _bad_rows(toy_frame(200, 3))
    whole = validate_table(frame, schema, "x.csv")
    blocks = validate_table((frame.iloc[i:i + 9] for i in range(0, len(frame), 9)), schema, "x.csv")
    assert whole.report.lines() == blocks.report.lines()
    np.testing.assert_array_equal(whole.values, blocks.values)


def test_a_column_named_twice_once_spaces_are_stripped_is_a_file_error(tmp_path: Path) -> None:
    """A header ` age,age,...` made two `age` columns; the checks then crashed on a table where a column
    was expected (and the traceback showed the rows). Now it is one error naming the column."""
    (tmp_path / "schema.toml").write_text(TOY_SCHEMA)
    frame = toy_frame(30)
    frame.insert(0, " age", frame["age"])
    frame.to_csv(tmp_path / "twice.csv", index=False)
    report = check_hospital_file(tmp_path / "twice.csv", load_schema(tmp_path / "schema.toml")).report
    assert not report.ok and any("'age' appear more than once in the header" in e for e in report.errors)


def test_an_empty_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "schema.toml").write_text(TOY_SCHEMA)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataFileError, match="empty.csv: the file is empty"):
        check_hospital_file(tmp_path / "empty.csv", load_schema(tmp_path / "schema.toml"))
