"""A hospital's file under a multi-class or continuous study: the outcome column is read as the schema's
classes, or as a number in [value]'s unit and range; a bad outcome cell rejects its row with a reason that
names the column and the rule, never the cell; the report counts rows per class (multi-class) and nothing
of the values (continuous)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fedhealth.data.validation import (
    ONE_CLASS_NOTE,
    DataFileError,
    absent_class_notes,
    check_hospital_file,
    read_hospital_file,
)
from fedhealth.study.schema import SchemaError, load_schema

COLUMNS = """
[[columns]]
name = "age"
kind = "continuous"
unit = "years"
min = 18
max = 100
center = 55
scale = 15
required = true
[[columns]]
name = "stage"
kind = "categorical"
categories = ["I", "II", "III"]
"""

MULTI = """
[study]
name = "severity"
outcome = "multiclass"
missing_values = ["", "NA"]
[label]
column = "severity"
[[label.classes]]
name = "none"
values = ["none", 0]
[[label.classes]]
name = "moderate"
values = ["moderate", 1]
[[label.classes]]
name = "severe"
values = ["severe", 2]
""" + COLUMNS

CONTINUOUS = """
[study]
name = "hba1c"
outcome = "continuous"
missing_values = ["", "NA"]
[label]
column = "hba1c"
[value]
unit = "mmol/mol"
min = 20
max = 200
center = 55
scale = 15
""" + COLUMNS

SPLIT = """
[split]
column = "side"
train = ["train"]
test = ["test"]
"""

# distinctive cells that must never appear in a report, a warning, an error or an exception's text
SECRET_CLASS = "grade-zz7731"
SECRET_TEXT = "qq4419x"
SECRET_NUMBER = "987654.25"


def _schema(tmp_path: Path, text: str, name: str = "schema.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load_schema(path)


def _frame(n: int, outcome: list, side: list | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"age": rng.integers(20, 90, n).astype(str), "stage": rng.choice(["I", "II", "III"], n)})
    frame["outcome"] = [str(v) for v in outcome]
    if side is not None:
        frame["side"] = side
    return frame


def _write(frame: pd.DataFrame, path: Path, column: str) -> Path:
    frame = frame.rename(columns={"outcome": column})
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def _text(report) -> str:
    return "\n".join(report.lines()) + json.dumps(report.as_dict())


def _assert_never_shown(text: str, *cells: str) -> None:
    for cell in cells:
        assert cell not in text, cell


# -- multi-class -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_multiclass_label_is_read_as_class_indices_and_counted_per_class(tmp_path, suffix):
    schema = _schema(tmp_path, MULTI)
    outcome = ["none"] * 20 + ["moderate", 1] * 6 + ["severe", "2"] * 4 + [SECRET_CLASS, "", "NA"]
    path = _write(_frame(len(outcome), outcome), tmp_path / f"site{suffix}", "severity")
    records = check_hospital_file(path, schema)
    r = records.report
    assert r.ok and r.rows == 43 and r.accepted == 40 and r.rejected == 3
    assert records.label.dtype == np.int64
    np.testing.assert_array_equal(records.label, [0] * 20 + [1] * 12 + [2] * 8)
    assert r.class_counts == {"none": 20, "moderate": 12, "severe": 8}
    assert r.reasons == {"severity (label): missing": 2,
                         "severity (label): value names none of the classes ['none', 'moderate', 'severe']": 1}
    assert r.lines()[0] == (f"{path}: 43 rows; 40 accepted (none 20, moderate 12, severe 8), 3 rejected, 0 without "
                            "research consent")
    d = r.as_dict()
    assert d["outcome"] == "multiclass" and d["class_counts"] == r.class_counts and "positives" not in d
    assert not r.warnings
    _assert_never_shown(_text(r), SECRET_CLASS)
    counted = check_hospital_file(path, schema, keep_values=False)  # what `fedhealth validate` reads
    assert counted.label.dtype == np.int8 and counted.report.class_counts == r.class_counts
    assert counted.report.lines() == r.lines()


def test_a_file_whose_labels_mostly_name_no_class_is_refused_naming_the_fix(tmp_path):
    schema = _schema(tmp_path, MULTI)
    outcome = [SECRET_CLASS] * 30 + ["none", "moderate", "severe"] * 5
    records = check_hospital_file(_write(_frame(len(outcome), outcome), tmp_path / "s.csv", "severity"), schema)
    assert not records.report.ok
    assert any("67% of rows hold a value that names none of the classes ['none', 'moderate', 'severe']; fix "
               "label.classes in the schema" in e for e in records.report.errors)
    with pytest.raises(DataFileError) as err:
        read_hospital_file(tmp_path / "s.csv", schema, "north")
    assert "label.classes" in str(err.value)
    _assert_never_shown(_text(records.report) + str(err.value), SECRET_CLASS)


def test_a_class_absent_from_the_seeded_split_is_a_warning_naming_it(tmp_path):
    schema = _schema(tmp_path, MULTI)
    outcome = ["none"] * 20 + ["moderate"] * 10 + ["severe"]  # one severe row: the seeded split trains on it
    records = check_hospital_file(_write(_frame(len(outcome), outcome), tmp_path / "s.csv", "severity"), schema)
    r = records.report
    assert r.ok and r.class_counts == {"none": 20, "moderate": 10, "severe": 1}
    assert len(r.warnings) == 1 and "1 usable row of class 'severe'" in r.warnings[0]
    assert "test side holds none" in r.warnings[0] and ONE_CLASS_NOTE in r.warnings[0]
    outcome = ["none"] * 20 + ["moderate"] * 10  # no severe row at all
    records = check_hospital_file(_write(_frame(len(outcome), outcome), tmp_path / "t.csv", "severity"), schema)
    assert records.report.ok and records.report.class_counts["severe"] == 0
    assert [w for w in records.report.warnings if "no usable row of class 'severe'" in w]


def test_a_class_absent_from_one_side_of_an_official_split_is_a_warning_naming_it(tmp_path):
    schema = _schema(tmp_path, MULTI + SPLIT)
    outcome = ["none"] * 12 + ["moderate"] * 12 + ["severe"] * 6 + ["none", "moderate"] * 4
    side = ["train"] * 30 + ["test"] * 8  # severe rows only on the training side
    path = _write(_frame(len(outcome), outcome, side), tmp_path / "s.csv", "severity")
    records = check_hospital_file(path, schema)
    r = records.report
    assert r.ok and int(records.is_test.sum()) == 8 and r.class_counts == {"none": 16, "moderate": 16, "severe": 6}
    assert r.warnings == [f"the official test split holds no row of class 'severe': {ONE_CLASS_NOTE}its own figures "
                          "of it are undefined"]
    assert absent_class_notes(records.label, ~records.is_test, ["none", "moderate", "severe"]) == [
        f"the official train split holds no row of class 'severe': {ONE_CLASS_NOTE}its local-only reference "
        "(simulation) never predicts it"]


# -- continuous --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_continuous_outcome_is_read_as_numbers_in_its_unit_and_bad_cells_reject_their_rows(tmp_path, suffix):
    schema = _schema(tmp_path, CONTINUOUS)
    values = [round(40 + 0.5 * i, 2) for i in range(30)]
    outcome = [*values, SECRET_TEXT, SECRET_NUMBER, "-3.5", "", "NA"]
    path = _write(_frame(len(outcome), outcome), tmp_path / f"site{suffix}", "hba1c")
    records = check_hospital_file(path, schema)
    r = records.report
    assert r.ok and r.rows == 35 and r.accepted == 30 and r.rejected == 5
    assert records.label.dtype == np.float64
    np.testing.assert_array_equal(records.label, values)
    assert r.reasons == {"hba1c (outcome): missing": 2, "hba1c (outcome): not a number": 1,
                         "hba1c (outcome): outside the valid range [20, 200] mmol/mol": 2}
    assert r.lines()[0] == f"{path}: 35 rows; 30 accepted, 5 rejected, 0 without research consent"
    d = r.as_dict()
    assert d["outcome"] == "continuous" and "positives" not in d and "class_counts" not in d
    assert r.class_counts is None and not r.warnings
    text = _text(r)
    _assert_never_shown(text, SECRET_TEXT, "987654", "-3.5")
    for figure in ("mean", "median", "average", "std"):  # no statistic of the hospital's outcome
        assert figure not in text
    counted = check_hospital_file(path, schema, keep_values=False)
    assert counted.label.dtype == np.float32 and counted.report.lines() == r.lines()


def test_a_continuous_outcome_in_another_unit_or_of_text_is_refused(tmp_path):
    schema = _schema(tmp_path, CONTINUOUS)
    in_percent = [str(round(5 + 0.1 * i, 1)) for i in range(30)]  # HbA1c in %, not mmol/mol: all below 20
    records = check_hospital_file(_write(_frame(30, in_percent), tmp_path / "pct.csv", "hba1c"), schema)
    assert not records.report.ok
    assert any("label column 'hba1c' (outcome): 100% of its values are below the valid minimum 20 mmol/mol: is it "
               "recorded in another unit?" in e for e in records.report.errors)
    _assert_never_shown(_text(records.report), *in_percent)
    text = [SECRET_TEXT] * 20 + ["50"] * 10
    records = check_hospital_file(_write(_frame(30, text), tmp_path / "txt.csv", "hba1c"), schema)
    assert not records.report.ok
    assert any("20 of 30 cells are not numbers" in e for e in records.report.errors)
    with pytest.raises(DataFileError) as err:
        read_hospital_file(tmp_path / "txt.csv", schema, "north")
    _assert_never_shown(_text(records.report) + str(err.value), SECRET_TEXT)


def test_a_continuous_outcome_with_an_official_split(tmp_path):
    schema = _schema(tmp_path, CONTINUOUS + SPLIT)
    outcome = [str(30 + i) for i in range(30)]
    path = _write(_frame(30, outcome, ["train"] * 20 + ["test"] * 10), tmp_path / "s.csv", "hba1c")
    records = check_hospital_file(path, schema)
    assert records.report.ok and int(records.is_test.sum()) == 10 and not records.report.warnings
    np.testing.assert_array_equal(records.label[records.is_test], np.arange(50, 60, dtype=float))


@pytest.mark.parametrize("text", [CONTINUOUS, MULTI])
def test_an_outcome_column_of_lists_is_refused_without_showing_a_cell(tmp_path, text):
    schema = _schema(tmp_path, text)
    column = schema.label.column
    frame = _frame(20, ["50"] * 20)
    frame["outcome"] = [[SECRET_NUMBER]] * 20  # a Parquet column of lists
    path = _write(frame, tmp_path / "lists.parquet", column)
    try:
        records = check_hospital_file(path, schema)
    except DataFileError as err:  # a column pandas cannot check: named by its column and error type only
        assert repr(column) in str(err) and "987654" not in str(err)
    else:
        assert not records.report.ok and records.report.rejected == 20
        assert any(column in e for e in records.report.errors)
        _assert_never_shown(_text(records.report), "987654")


# -- the printed report ------------------------------------------------------------------------------------

def test_fedhealth_validate_prints_class_counts(tmp_path):
    from fedhealth.cli import app

    _schema(tmp_path, MULTI)
    outcome = ["none"] * 20 + ["moderate"] * 8 + ["severe"] * 4 + [SECRET_CLASS]
    path = _write(_frame(len(outcome), outcome), tmp_path / "s.csv", "severity")
    result = CliRunner().invoke(app, ["validate", "--schema", str(tmp_path / "schema.toml"), "--data", str(path),
                                      "--json", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    assert "32 accepted (none 20, moderate 8, severe 4), 1 rejected" in result.output
    written = json.loads((tmp_path / "report.json").read_text())["files"][0]
    assert written["class_counts"] == {"none": 20, "moderate": 8, "severe": 4}
    _assert_never_shown(result.output + json.dumps(written), SECRET_CLASS)


# -- the schema's refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, key, message", [
    (MULTI.replace('column = "severity"', 'column = "severity"\npositive = [2]\nnegative = [0]'), "label",
     "a multiclass study has no positive/negative values"),
    (CONTINUOUS.replace('column = "hba1c"', 'column = "hba1c"\npositive = [1]\nnegative = [0]'), "label",
     "a continuous study has no positive/negative values"),
    (MULTI.replace('outcome = "multiclass"', 'outcome = "binary"').replace(
        'column = "severity"', 'column = "severity"\npositive = [2]\nnegative = [0]'), "label.classes",
     "only a multiclass study has classes"),
    (CONTINUOUS.split("[value]")[0] + COLUMNS, "[value]", "a continuous study needs a [value] table"),
    (MULTI.replace('[[label.classes]]\nname = "severe"\nvalues = ["severe", 2]\n', ""), "label.classes",
     "at least three classes"),
    (MULTI.replace('values = ["severe", 2]', 'values = ["severe", 1]'), "label.classes",
     "listed for more than one class"),
])
def test_a_schema_that_contradicts_its_outcome_kind_is_refused_naming_the_key(tmp_path, text, key, message):
    with pytest.raises(SchemaError) as err:
        _schema(tmp_path, text)
    assert key in str(err.value) and message in str(err.value)
