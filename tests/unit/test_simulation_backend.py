"""Which simulation backend a study runs on: `federation.backend`, with "auto" resolved by size and cores.

The choice changes speed only (the backends give the same model bit for bit, tested in
tests/integration/test_simulate_federation.py), so what matters here is that "auto" picks as documented,
that an explicit choice is never overridden, and that a `ray_address` is never silently ignored."""

from __future__ import annotations

import pytest

from fedhealth.data.study_file import load_config
from fedhealth.experiments import simulate
from fedhealth.experiments.simulate import RAY_FROM_HOSPITALS, simulation_backend
from fedhealth.study.config import StudyConfig
from tests.support import ROOT

LARGE = ROOT / "configs" / "large.toml"


def _study(hospitals: int, *overrides: str) -> StudyConfig:
    return load_config(LARGE, [f"population.count={hospitals}", *overrides])


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(simulate.os, "cpu_count", lambda: 2)


def test_auto_is_the_default_and_runs_small_studies_in_process(two_cores):
    cfg = _study(RAY_FROM_HOSPITALS - 1)
    assert cfg.federation.backend == "auto"
    assert simulation_backend(cfg) == "in-process"


def test_auto_moves_large_studies_onto_ray(two_cores):
    assert simulation_backend(_study(RAY_FROM_HOSPITALS)) == "ray"


def test_auto_stays_in_process_on_one_core(monkeypatch):
    monkeypatch.setattr(simulate.os, "cpu_count", lambda: 1)
    assert simulation_backend(_study(RAY_FROM_HOSPITALS)) == "in-process"


def test_a_ray_address_means_ray_whatever_the_size(two_cores):
    assert simulation_backend(_study(3, "federation.ray_address=auto")) == "ray"


@pytest.mark.parametrize("backend", ["in-process", "ray"])
def test_an_explicit_backend_is_never_overridden(two_cores, backend):
    for hospitals in (3, RAY_FROM_HOSPITALS):
        assert simulation_backend(_study(hospitals, f"federation.backend={backend}")) == backend


def test_a_ray_address_with_the_in_process_backend_is_refused():
    with pytest.raises(Exception, match="ray_address.*in-process"):
        _study(3, "federation.backend=in-process", "federation.ray_address=auto")
