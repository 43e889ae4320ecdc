"""The Python API (`fedhealth.api`, re-exported by `fedhealth`): a study loaded with Python overrides, simulated end
to end, and the returned `Run` checked against the run directory it wrote; the error hierarchy."""

import importlib
import inspect
import pkgutil

import pytest

import fedhealth as fh
from fedhealth import api, errors
from fedhealth.runs import rundir
from fedhealth.study.config import ConfigError
from tests.support import SMOKE

# ---- load_study ---------------------------------------------------------------------------------------------

def test_load_study_takes_python_values_as_they_are():
    cfg = fh.load_study(SMOKE, {"federation.rounds": 5, "model.hidden": [8, 4], "model.name": "mlp",
                                "training.learning_rate": 0.1, "references.pooled": False, "name": "123",
                                "federation.strategy": {"name": "fedadam", "server_tau": 0.01},
                                "testing.dropouts": [{"hospital": "village-clinic", "stage": "setup"}]})
    assert cfg.federation.rounds == 5 and cfg.model.hidden == [8, 4] and cfg.model.name == "mlp"
    assert cfg.training.learning_rate == 0.1 and cfg.references.pooled is False
    assert cfg.name == "123"  # a Python str stays a str (`--set name=123` would read the TOML integer 123)
    assert cfg.federation.strategy.name == "fedadam" and cfg.federation.strategy.server_tau == 0.01
    assert cfg.testing.dropouts[0].hospital == "village-clinic"


def test_load_study_is_the_cli_override_mechanism():
    """The same overrides as a dict of Python values and as `--set` strings give the same study."""
    as_dict = fh.load_study(str(SMOKE), {"federation.rounds": 3, "federation.strategy.name": "fedprox"})
    as_set = fh.load_study(SMOKE, ["federation.rounds=3", "federation.strategy.name=fedprox"])
    from fedhealth.data.study_file import load_config

    assert as_dict == as_set == load_config(SMOKE, ["federation.rounds=3", "federation.strategy.name=fedprox"])
    assert as_dict.fingerprint() == as_set.fingerprint()


@pytest.mark.parametrize("overrides, key", [({"federation.roundz": 3}, "federation.roundz"),
                                            ({"modle.name": "mlp"}, "modle"),
                                            ({"federation.rounds": 0}, "federation.rounds"),
                                            ({"federation.rounds": None}, "federation.rounds")])
def test_load_study_with_a_bad_key_raises_the_config_error_naming_it(overrides, key):
    with pytest.raises(fh.StudyConfigError, match=key.replace(".", r"\.")) as caught:
        fh.load_study(SMOKE, overrides)
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ValueError)
    assert isinstance(caught.value, fh.FedhealthError)


def test_an_override_on_a_loaded_study_is_validated_like_one_on_its_file():
    cfg = fh.load_study(SMOKE)
    with pytest.raises(fh.StudyConfigError, match="federation.strategy.name"):
        api._study(cfg, {"privacy.mode": "record", "privacy.noise_multiplier": 1.0,
                         "federation.strategy.name": "fedprox"})
    assert api._study(cfg, {"seed": 3}).seed == 3 and api._study(cfg, None) is cfg


# ---- errors -------------------------------------------------------------------------------------------------

def _fedhealth_exceptions() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(fh.__path__, "fedhealth."):
        module = importlib.import_module(info.name)
        found += [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                  if issubclass(obj, BaseException) and obj.__module__ == info.name]
    return found


def test_every_fedhealth_exception_is_a_fedhealth_error():
    found = _fedhealth_exceptions()
    assert len(found) >= 25  # every package imported, not a few
    # the one exception: a stop by signal is no error, and must pass every `except Exception` (errors.py)
    assert [c.__qualname__ for c in found if not issubclass(c, fh.FedhealthError | fh.RunInterrupted)] == []
    assert issubclass(fh.RunInterrupted, KeyboardInterrupt) and not issubclass(fh.RunInterrupted, Exception)
    assert set(errors.__all__) | set(api.__all__) <= set(fh.__all__)
    for name in errors.__all__:
        assert getattr(fh, name) is getattr(errors, name)


@pytest.mark.parametrize("module, name, category, builtin", [
    ("fedhealth.study.config", "ConfigError", "StudyConfigError", ValueError),
    ("fedhealth.study.schema", "SchemaError", "StudyConfigError", ValueError),
    ("fedhealth.data.validation", "DataFileError", "DataError", ValueError),
    ("fedhealth.runs.rundir", "RunDirError", "RunDirectoryError", ValueError),
    ("fedhealth.reporting.report", "ReportError", "RunDirectoryError", RuntimeError),
    ("fedhealth.privacy.ledger", "BudgetExceeded", "PrivacyBudgetError", RuntimeError),
    ("fedhealth.privacy.ledger", "LedgerError", "PrivacyRecordsError", ValueError),
    ("fedhealth.experiments.simulate", "SimulationError", "FederationError", RuntimeError),
    ("fedhealth.coordinator.app", "NothingAggregated", "AggregationError", RuntimeError),
    ("fedhealth.deployment.app_trust", "AppTrustError", "TrustError", ValueError),
    ("fedhealth.runs.tracking", "TrackingError", "MissingExtraError", RuntimeError),
])
def test_each_exception_keeps_its_builtin_base(module, name, category, builtin):
    """`except ValueError` / `except RuntimeError` catch what they always caught, and nothing more."""
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, getattr(errors, category)) and issubclass(cls, builtin)
    other = RuntimeError if builtin is ValueError else ValueError
    assert not issubclass(cls, other)


def test_the_api_functions_win_over_the_modules_of_the_same_name():
    import fedhealth.experiments.contribution
    import fedhealth.experiments.simulate
    import fedhealth.experiments.sweep  # noqa: F401

    assert fh.simulate is api.simulate and fh.sweep is api.sweep and fh.contribution is api.contribution
    from fedhealth.experiments.simulate import shared_ray  # the modules are still imported by their full name

    assert callable(shared_ray)


def test_usage_errors_are_raised_before_anything_runs(tmp_path):
    with pytest.raises(fh.UsageError, match="'eight' is not a number"):
        fh.sweep(SMOKE, "1,eight", tmp_path / "s")
    with pytest.raises(fh.UsageError, match="must be positive"):
        fh.sweep(SMOKE, [0.0, 1.0], tmp_path / "s")
    with pytest.raises(fh.UsageError, match="audit_references -1"):
        fh.sweep(SMOKE, [1.0, None], tmp_path / "s", audit_references=-1)
    other = rundir.create_run_dir(fh.load_study(SMOKE, {"seed": 8}), tmp_path / "other")
    with pytest.raises(fh.RunDirectoryError, match="different study config"):
        fh.contribution(SMOKE, 4, tmp_path / "c", report_into=other)
    with pytest.raises(fh.RunDirectoryError, match="not a fedhealth run directory"):
        fh.Run.open(tmp_path)
    assert not (tmp_path / "s").exists() and not (tmp_path / "c").exists()
