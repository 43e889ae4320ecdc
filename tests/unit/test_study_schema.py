"""Study schema files and hospitals' own files: every bad input stops before round 1 with a precise reason,
and no report ever shows a patient's value."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedhealth.data.export import write_synthetic_study
from fedhealth.data.hospitals import load_hospital
from fedhealth.data.study_file import load_config
from fedhealth.data.synthetic import HospitalProfile, generate_hospital
from fedhealth.data.validation import DataFileError, read_hospital_file, validate_table
from fedhealth.study.builtin_schema import encode_features
from fedhealth.study.config import ConfigError
from fedhealth.study.schema import SchemaError, default_schema, load_schema, schema_from_dict
from tests.support import ROOT, SMOKE, TOY_SCHEMA, toy_frame

HEART = ROOT / "configs" / "data" / "heart-disease"

@pytest.fixture
def toy_schema(tmp_path):
    path = tmp_path / "schema.toml"
    path.write_text(TOY_SCHEMA)
    return load_schema(path)


# -- the schema itself -------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("min = 18", "min = 120"), "min (120) must be below max (100)"),
    (lambda s: s.replace("center = 55", "center = 150"), "center (150) lies outside the valid range"),
    (lambda s: s.replace('categories = ["I", "II", "III"]', 'categories = ["I"]'), "at least two `categories`"),
    (lambda s: s.replace('negative = ["no"]', 'negative = ["no", "yes"]'), "both positive and negative"),
    (lambda s: s.replace('column = "outcome"', 'column = "age"'), "also a model input"),
    (lambda s: s + '[[columns]]\nname = "age"\nkind = "binary"\n', "age listed more than once"),
    (lambda s: s.replace("scale = 1.6", ""), "needs scale"),
    (lambda s: s.replace('kind = "binary"', 'kind = "binary"\nmax = 7'), "binary column takes the values 0 and 1"),
])
def test_a_self_contradicting_schema_is_refused_with_the_reason(tmp_path, edit, message):
    path = tmp_path / "schema.toml"
    path.write_text(edit(TOY_SCHEMA))
    with pytest.raises(SchemaError) as err:
        load_schema(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_missing_or_broken_schema_files_are_named(tmp_path):
    with pytest.raises(SchemaError, match="schema file not found"):
        load_schema(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[study\nname=")
    with pytest.raises(SchemaError, match="not a readable TOML file"):
        load_schema(tmp_path / "bad.toml")


def test_the_default_schema_encodes_exactly_like_the_builtin_record():
    records = generate_hospital(HospitalProfile("c", "community", "west", 800), 3, 11)
    schema = default_schema()
    np.testing.assert_array_equal(schema.encode(records.features), encode_features(records.features))
    again = schema_from_dict(json.loads(json.dumps(schema.model_dump(mode="json"))), "round trip")
    assert again.fingerprint() == schema.fingerprint()


def test_encoding_one_hots_categories_and_flags_missing_values(toy_schema):
    frame = toy_frame(3)
    frame.loc[0, "glucose"] = "NA"
    frame.loc[1, "stage"] = ""
    frame.loc[:, "stage"] = ["III", "", "I"]
    records = validate_table(frame, toy_schema, "toy.csv")
    x = toy_schema.encode(records.values)
    names = toy_schema.encoded_names
    assert names == ["age", "glucose", "smoker", "age_missing", "glucose_missing", "stage=I", "stage=II", "stage=III"]
    assert x[0, names.index("glucose")] == 0 and x[0, names.index("glucose_missing")] == 1
    assert list(x[0, 5:]) == [0, 0, 1] and list(x[1, 5:]) == [0, 0, 0] and list(x[2, 5:]) == [1, 0, 0]


# -- one hospital's file --------------------------------------------------------------------------------

def _all_text(report) -> str:
    return "\n".join(report.lines()) + json.dumps(report.as_dict())


def test_bad_rows_are_counted_by_reason_and_no_value_is_ever_shown(toy_schema):
    frame = toy_frame(40)
    frame.loc[0, "age"] = "987654"  # out of range: a distinctive value that must not appear anywhere
    frame.loc[1, "glucose"] = "high"
    frame.loc[2, "stage"] = "IV"
    frame.loc[3, "outcome"] = "maybe"
    frame.loc[4, "age"] = ""  # required
    frame.loc[5, "consent"] = "withdrawn"
    frame.loc[6, "smoker"] = "2"
    records = validate_table(frame, toy_schema, "site.csv")
    r = records.report
    assert r.ok and r.rows == 40 and r.no_consent == 1 and r.rejected == 6 and r.accepted == 33
    assert r.reasons == {"age: above its valid maximum 100 years": 1, "glucose: not a number": 1,
                         "stage: value not among its 3 categories": 1, "age: missing (required)": 1,
                         "smoker: not 0 or 1": 1,
                         "outcome (label): value is neither a positive ['yes'] nor a negative ['no']": 1}
    text = _all_text(r)
    for value in ("987654", "high", "IV", "maybe", "withdrawn"):
        assert value not in text
    assert len(records.label) == 33 and set(records.label) <= {0, 1}


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.drop(columns=["glucose"]), "missing column(s) glucose"),
    (lambda f: f.assign(glucose=(f["glucose"].astype(float) * 18).round().astype(str)),
     "of its values are above the valid maximum 35 mmol/L: is it recorded in another unit"),
    (lambda f: f.assign(age="unknown"), "are not numbers"),
    (lambda f: f.assign(consent="no"), "no row allows research use"),
    (lambda f: f.iloc[:0], "header but no rows"),
    (lambda f: f.assign(outcome="1"), "label column 'outcome': 100% of rows hold a value the schema does not name"),
])
def test_a_file_that_cannot_be_used_is_refused_with_what_to_change(toy_schema, tmp_path, edit, message):
    path = tmp_path / "site.csv"
    edit(toy_frame(40)).to_csv(path, index=False)
    with pytest.raises(DataFileError) as err:
        read_hospital_file(path, toy_schema, "st-mary")
    assert message in str(err.value) and "hospital 'st-mary'" in str(err.value) and str(path) in str(err.value)


def test_unreadable_files(toy_schema, tmp_path):
    with pytest.raises(DataFileError, match="data file not found"):
        read_hospital_file(tmp_path / "absent.csv", toy_schema)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataFileError, match="the file is empty"):
        read_hospital_file(tmp_path / "empty.csv", toy_schema)
    (tmp_path / "x.xlsx").write_text("a")
    with pytest.raises(DataFileError, match="unknown file type"):
        read_hospital_file(tmp_path / "x.xlsx", toy_schema)


def test_parquet_reads_like_csv(toy_schema, tmp_path):
    frame = toy_frame(30)
    typed = frame.assign(age=frame["age"].astype(int), glucose=frame["glucose"].astype(float),
                         smoker=frame["smoker"].astype(int))
    frame.to_csv(tmp_path / "a.csv", index=False)
    typed.to_parquet(tmp_path / "a.parquet")
    a = read_hospital_file(tmp_path / "a.csv", toy_schema)
    b = read_hospital_file(tmp_path / "a.parquet", toy_schema)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.label, b.label)


# -- hospitals as files in a study config ----------------------------------------------------------------

def _file_study(tmp_path: Path, hospitals: str, schema: str = TOY_SCHEMA) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "schema.toml").write_text(schema)
    cfg = tmp_path / "study.toml"
    cfg.write_text('schema = "data/schema.toml"\n[model]\nname = "logreg"\n'
                   '[federation.secure_aggregation]\nenabled = false\n' + hospitals)
    return cfg


def _hospital(name: str, file: str) -> str:
    return f'[[hospitals]]\nname = "{name}"\ndata = "data/{file}"\n'


def test_paths_resolve_against_the_config_and_rows_are_counted(tmp_path):
    for i, name in enumerate(("a", "b", "c")):
        toy_frame(60 + 10 * i, seed=i).to_csv(tmp_path / f"{name}.csv", index=False)
    (tmp_path / "data").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.csv").rename(tmp_path / "data" / f"{name}.csv")
    cfg = load_config(_file_study(tmp_path, "".join(_hospital(n, f"{n}.csv") for n in "abc")))
    assert [h.records for h in cfg.hospitals] == [60, 70, 80]
    assert all(h.data.startswith(str(tmp_path)) and len(h.data_sha256) == 64 for h in cfg.hospitals)
    assert [h.tier for h in cfg.hospitals] == ["unspecified"] * 3
    split = load_hospital(cfg, 1)
    assert split.x_train.shape[1] == cfg.study_schema.encoded_width == 8
    assert len(split.y_train) + len(split.y_test) == 70 and np.isnan(split.bayes_auroc)


def test_bad_inputs_stop_the_study_naming_hospital_file_and_fix(tmp_path):
    (tmp_path / "data").mkdir()
    toy_frame(50).to_csv(tmp_path / "data" / "ok.csv", index=False)
    toy_frame(50).drop(columns=["stage"]).to_csv(tmp_path / "data" / "cols.csv", index=False)
    toy_frame(50).assign(outcome="no").to_csv(tmp_path / "data" / "oneclass.csv", index=False)
    study = _file_study(tmp_path, _hospital("ok", "ok.csv") + _hospital("missing", "absent.csv")
                        + _hospital("cols", "cols.csv") + _hospital("oneclass", "oneclass.csv"))
    with pytest.raises(ConfigError) as err:
        load_config(study)
    text = str(err.value)
    assert "hospital 'missing'" in text and "absent.csv: data file not found" in text
    assert "hospital 'cols'" in text and "missing column(s) stage" in text
    assert "hospital 'ok'" not in text and "hospital 'oneclass'" not in text  # one class: a warning, not an error


def test_mixing_generated_and_file_hospitals_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    toy_frame(50).to_csv(tmp_path / "data" / "ok.csv", index=False)
    study = _file_study(tmp_path, _hospital("ok", "ok.csv")
                        + '[[hospitals]]\nname = "gen"\ntier = "community"\nregion = "west"\nrecords = 300\n')
    with pytest.raises(ConfigError, match="a study has one schema"):
        load_config(study)
    no_schema = tmp_path / "noschema.toml"
    no_schema.write_text(_hospital("ok", "ok.csv"))
    with pytest.raises(ConfigError, match="needs the study's schema"):
        load_config(no_schema)


def test_a_tiny_valid_site_trains_with_a_warning(tmp_path, caplog):
    (tmp_path / "data").mkdir()
    toy_frame(24, seed=3).to_csv(tmp_path / "data" / "tiny.csv", index=False)
    with caplog.at_level(logging.WARNING):
        cfg = load_config(_file_study(tmp_path, _hospital("tiny", "tiny.csv")))
    assert cfg.hospitals[0].records == 24
    assert "only 24 usable rows" in caplog.text


def test_a_file_changed_after_the_study_was_configured_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    toy_frame(50).to_csv(tmp_path / "data" / "a.csv", index=False)
    cfg = load_config(_file_study(tmp_path, _hospital("a", "a.csv")))
    toy_frame(50, seed=9).to_csv(tmp_path / "data" / "a.csv", index=False)
    with pytest.raises(DataFileError, match="changed since the study was configured"):
        load_hospital(cfg, 0)


def test_an_official_split_column_is_used_and_checked(tmp_path, caplog):
    schema = TOY_SCHEMA + '[split]\ncolumn = "set"\ntrain = ["train"]\ntest = ["test"]\n'
    (tmp_path / "data").mkdir()
    frame = toy_frame(60).assign(set=["test" if i % 3 == 0 else "train" for i in range(60)])
    frame.to_csv(tmp_path / "data" / "a.csv", index=False)
    cfg = load_config(_file_study(tmp_path, _hospital("a", "a.csv"), schema))
    split = load_hospital(cfg, 0)
    assert len(split.y_test) == 20 and len(split.y_train) == 40
    frame.assign(outcome=np.where(frame["set"] == "test", "no", frame["outcome"])).to_csv(
        tmp_path / "data" / "a.csv", index=False)
    # an official test split with one class is not refused (issue 18): the site trains, and says why its
    # AUROC will be undefined
    with caplog.at_level(logging.WARNING):
        cfg = load_config(_file_study(tmp_path, _hospital("a", "a.csv"), schema))
        split = load_hospital(cfg, 0)
    assert len(split.y_test) == 20 and not split.y_test.any() and split.y_train.any()
    # said once, where the split is made (the file-level note of `validate` is not repeated)
    assert "the official test split holds 0 positive and 20 negative rows" not in caplog.text
    assert caplog.text.count("hospital a: its test split holds 0 positive and 20 negative records") == 1
    # an official split that leaves a side empty is refused: nothing to test (or to train) on
    frame.assign(set="train").to_csv(tmp_path / "data" / "a.csv", index=False)
    with pytest.raises(ConfigError, match="the official test split holds no usable rows"):
        load_config(_file_study(tmp_path, _hospital("a", "a.csv"), schema))


def test_synth_writes_files_schema_and_a_config_that_reads_them_back_identically(tmp_path):
    original = load_config(SMOKE)
    write_synthetic_study(original, tmp_path)
    assert load_schema(tmp_path / "schema.toml").fingerprint() == default_schema().fingerprint()
    files = load_config(tmp_path / "smoke-files.toml")
    assert [h.records for h in files.hospitals] == [h.records for h in original.hospitals]
    assert [(h.tier, h.region) for h in files.hospitals] == [(h.tier, h.region) for h in original.hospitals]
    for i in range(len(original.hospitals)):
        a, b = load_hospital(original, i), load_hospital(files, i)
        for name in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_the_heart_disease_files_validate_with_their_schema():
    schema = load_schema(HEART / "schema.toml")
    rows = {"cleveland": 303, "hungary": 294, "switzerland": 123, "va_long_beach": 200}
    for site, n in rows.items():
        records = read_hospital_file(HEART / f"{site}.csv", schema, site)
        assert records.report.rows == n and records.report.ok


def test_fedhealth_validate_exit_codes_and_report(tmp_path):
    (tmp_path / "schema.toml").write_text(TOY_SCHEMA)
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    toy_frame(30).to_csv(good, index=False)
    toy_frame(30).drop(columns=["age"]).to_csv(bad, index=False)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "fedhealth.cli", "validate", "--schema",
                               str(tmp_path / "schema.toml"), *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)

    ok = run("--data", str(good), "--json", str(tmp_path / "r.json"))
    assert ok.returncode == 0 and "30 accepted" in ok.stdout and "usable" in ok.stdout
    assert json.loads((tmp_path / "r.json").read_text())["files"][0]["accepted"] == 30
    not_ok = run("--data", str(good), "--data", str(bad))
    assert not_ok.returncode == 1 and "missing column(s) age" in not_ok.stdout
    unreadable = run("--data", str(tmp_path / "absent.csv"))
    assert unreadable.returncode == 2 and "data file not found" in unreadable.stderr


def test_a_deployment_study_declares_records_and_keeps_files_at_the_hospitals(tmp_path):
    """The server's config names each hospital and an upper bound of its rows; the files stay at the sites,
    and tier and region are free labels."""
    (tmp_path / "data").mkdir()
    study = _file_study(tmp_path, '[[hospitals]]\nname = "a"\nrecords = 300\ntier = "teaching"\nregion = "Ohio"\n'
                        '[[hospitals]]\nname = "b"\nrecords = 40\n')
    cfg = load_config(study)
    assert [(h.records, h.data, h.tier) for h in cfg.hospitals] == [(300, None, "teaching"), (40, None, "unspecified")]
    with pytest.raises(FileNotFoundError, match="data-file in its node config"):
        load_hospital(cfg, 0)
    toy_frame(50).to_csv(tmp_path / "data" / "b.csv", index=False)
    # more rows than declared: the first 40 usable rows, and no error the server could probe the count with
    split = load_hospital(cfg, 1, str(tmp_path / "data" / "b.csv"))
    assert len(split.y_train) + len(split.y_test) == 40
    undeclared = tmp_path / "undeclared.toml"
    undeclared.write_text(study.read_text().replace("records = 40\n", ""))
    with pytest.raises(ConfigError, match="give `data` \\(simulation\\) or `records`"):
        load_config(undeclared)
    generated = tmp_path / "gen.toml"
    generated.write_text('[[hospitals]]\nname = "g"\ntier = "teaching"\nregion = "west"\nrecords = 300\n')
    with pytest.raises(ConfigError, match="tier 'teaching' is not a generator tier"):
        load_config(generated)


# -- a time-to-event outcome (issue 18): the schema and the file checks; training it is refused for now --

def _toml(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)


SURVIVAL = TOY_SCHEMA.replace('name = "toy"\n', 'name = "toy"\noutcome = "time_to_event"\n', 1) + """
[time]
column = "days"
unit = "days"
max = 1000
intervals = [0, 100, 300, 1000]
horizons = [100, 300]
"""


def test_a_time_to_event_schema_names_its_follow_up_and_intervals():
    schema = schema_from_dict(_toml(SURVIVAL), "s.toml")
    assert schema.study.outcome == "time_to_event" and schema.time.intervals == [0, 100, 300, 1000]
    assert "days" not in schema.feature_names  # the follow-up is the outcome, never a model input
    for change, message in [
        (lambda s: s.replace('outcome = "time_to_event"\n', ""), "a time_to_event study needs a \\[time\\] table"),
        (lambda s: s.split("[time]")[0], "a time_to_event study needs a \\[time\\] table"),
        (lambda s: s.replace("intervals = [0, 100", "intervals = [10, 100"), "must start at 0 and increase"),
        (lambda s: s.replace("intervals = [0, 100, 300, 1000]", "intervals = [0, 300, 100, 1000]"),
         "must start at 0 and increase"),
        (lambda s: s.replace("max = 1000\nintervals", "max = 900\nintervals"), "at most time.max \\(900\\)"),
        (lambda s: s.replace("horizons = [100, 300]", "horizons = [300, 2000]"), "time.horizons"),
        (lambda s: s.replace('column = "days"', 'column = "outcome"'), "must be different columns"),
        (lambda s: s.replace('column = "days"', 'column = "age"'), "is also a model input"),
    ]:
        with pytest.raises(SchemaError, match=message):
            schema_from_dict(_toml(change(SURVIVAL)), "s.toml")


def test_a_binary_schemas_fingerprint_did_not_change_with_outcome_kinds():
    """Run directories and hospitals compare schema fingerprints: the binary schemas keep theirs."""
    assert default_schema().fingerprint() == "66803723c9392ada"
    assert load_schema(ROOT / "configs/data/heart-disease/schema.toml").fingerprint() == "0db342f8bad8da5a"
    survival = schema_from_dict(_toml(SURVIVAL), "s.toml")
    assert survival.fingerprint() != schema_from_dict(_toml(TOY_SCHEMA), "t.toml").fingerprint()


def test_follow_up_times_are_checked_and_kept_and_the_study_trains_a_hazard_model(tmp_path):
    schema = schema_from_dict(_toml(SURVIVAL), "s.toml")
    frame = toy_frame(30, seed=4).assign(days=[str(10 * (i + 1)) for i in range(30)])
    frame.loc[0, "days"] = ""        # missing
    frame.loc[1, "days"] = "-3"      # not above 0
    frame.loc[2, "days"] = "5000"    # beyond time.max
    frame.loc[3, "days"] = "soon"    # not a number
    records = validate_table(frame, schema, "site.csv")
    reasons = records.report.reasons
    assert reasons["days (follow-up time): missing"] == 1 and reasons["days (follow-up time): not a number"] == 1
    assert reasons["days (follow-up time): not above 0 and at most 1000 days"] == 2
    assert records.report.accepted == 26 and records.time.tolist() == [10.0 * (i + 1) for i in range(4, 30)]
    text = "\n".join(records.report.lines())
    assert "-3" not in text and "5000" not in text and "soon" not in text  # counts and rules, never a value
    events = int(records.label.sum())
    assert f"26 accepted ({events} with the event)" in text.splitlines()[0]
    from fedhealth.model.losses import LogisticHazard
    from fedhealth.model.outcomes import study_loss

    (tmp_path / "data").mkdir(exist_ok=True)
    frame.iloc[4:].to_csv(tmp_path / "data" / "a.csv", index=False)
    cfg = load_config(_file_study(tmp_path, _hospital("a", "a.csv"), SURVIVAL))
    assert cfg.outcome_kind == "time_to_event" and cfg.time_spec == schema.time
    assert study_loss(cfg) == LogisticHazard(len(schema.time.intervals) - 1)  # never binary cross-entropy


def test_a_binary_studys_config_fingerprint_and_dumps_did_not_change_with_outcome_kinds():
    """The study config's fingerprint (a hash of its dump) keys run directories, resumes and the ledger's
    study id: an own-data binary study's dump holds exactly the schema keys it held before outcome kinds, so
    its fingerprint is the old one, and neither its resolved config nor its wire payload carries a key an
    older fedhealth would refuse. (The fingerprint itself holds the data files' absolute paths, so it is not
    pinned here; the schema's own fingerprint is, above.)"""
    from fedhealth.wire import STUDY_KEY, study_payload

    before = {"study", "label", "consent", "split", "columns"}  # StudySchema's fields at 13974b0
    for config in ("heart-disease.toml", "heart-disease-flamby.toml", "deployment/heart-disease.toml"):
        cfg = load_config(ROOT / "configs" / config)
        for dumped in (cfg.model_dump(mode="json")["study_schema"],
                       json.loads(study_payload(cfg, 1)[STUDY_KEY])["study_schema"]):
            assert set(dumped) == before, config
            assert set(dumped["study"]) == {"name", "description", "missing_values"}, config


def test_an_outcome_that_contradicts_the_schema_is_refused_on_every_path_that_builds_a_config():
    """A study of files takes its outcome from its schema: a study config (or the payload a hospital receives
    from the server, or a config built in Python) that says otherwise is refused, so that no hospital trains
    one outcome's loss on another's columns."""
    from fedhealth.study.config import StudyConfig, parse_config

    schema = schema_from_dict(_toml(TOY_SCHEMA), "t.toml")
    data = {"name": "s", "outcome": "time_to_event", "study_schema": schema.model_dump(mode="json"),
            "hospitals": [{"name": "a", "records": 100}],
            "federation": {"secure_aggregation": {"enabled": False}}}
    with pytest.raises(ConfigError, match="takes its outcome from its schema"):
        parse_config(data, "server study config")
    with pytest.raises(ValueError, match="takes its outcome from its schema"):
        StudyConfig.model_validate(data)
    survival = schema_from_dict(_toml(SURVIVAL), "s.toml")
    agreeing = StudyConfig.model_validate({**data, "study_schema": survival.model_dump(mode="json")})
    assert agreeing.outcome_kind == "time_to_event"
