import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: a test here is slow whether or not it says so
def pytest_collection_modifyitems(config, items):
    """Every test in tests/integration/ starts a real federation or real processes, or is a long statistical
    check (interval coverage over hundreds of replicates): mark it slow, so that
    `pytest -m "not slow"` (the fast lane) never runs one, even one that forgot its marker."""
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def interrupted_run():
    """Run `simulate` until a fault injected in the server's round hook stops it after round 1."""
    from fedhealth.experiments.simulate import simulate

    def run(cfg, run_dir: Path) -> None:
        def crash_after_round_one(server_round, _info):
            if server_round == 1:
                raise RuntimeError("injected fault after round 1")

        with pytest.raises(Exception, match="injected fault"):
            simulate(cfg, run_dir, on_round=crash_after_round_one)

    return run


@pytest.fixture(scope="session", autouse=True)
def one_ray_for_the_session():
    """In-process federations share one Ray instance (see fedhealth.experiments.simulate.shared_ray): each still gets
    fresh actors, but the suite stops paying Ray's start and stop for every federation.
    FEDHEALTH_TEST_FRESH_RAY=1 gives every federation its own Ray, as a user's single run has."""
    if os.environ.get("FEDHEALTH_TEST_FRESH_RAY") == "1":
        yield
        return
    from fedhealth.experiments.simulate import shared_ray

    with shared_ray():
        yield
