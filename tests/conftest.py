import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

# the helpers' own checks (tests/support.py) report what they compared, as the tests' asserts do
pytest.register_assert_rewrite("tests.support")


# Test files that bind fixed ports on 127.0.0.1 (the deployment walk-through's 9092-9097, `flwr run`'s local
# SuperLink): under pytest-xdist they share one worker, so two of them never run at once.
FIXED_PORTS = {"test_deployment", "test_deployment_docs", "test_flwr_run"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """The suite runs on two pytest-xdist workers (`-n 2 --dist loadgroup`, pyproject.toml). Unit tests are
    handed out one by one (the two workers stay evenly busy). Each integration test file is one group that
    runs whole on one worker, so its module fixtures (a federation that several tests read) are built once,
    as in a single process; the files that bind fixed ports are one group together. `-n 0` runs everything
    in this process instead."""
    for item in items:
        stem = item.path.stem
        if stem in FIXED_PORTS:
            item.add_marker(pytest.mark.xdist_group("fixed-ports"))
        elif "integration" in item.path.parts:
            item.add_marker(pytest.mark.xdist_group(stem))


# ---- The suite's own collection, for tests/unit/test_suite_layout.py ----
# Which collected test carries the `slow` marker, as it stands after every collection hook, kept and
# deselected tests alike. test_suite_layout reads it when this session collected the whole suite (as every
# pytest-xdist worker does), instead of collecting the suite a second time in a subprocess.
SLOW_MARKS = pytest.StashKey[dict]()
_DESELECTED = pytest.StashKey[list]()


def pytest_deselected(items):
    if items:
        config = items[0].config
        config.stash.setdefault(_DESELECTED, []).extend(items)


@pytest.hookimpl(trylast=True)  # after every other hook has marked and deselected
def pytest_collection_finish(session):
    everything = list(session.items) + session.config.stash.get(_DESELECTED, [])
    session.config.stash[SLOW_MARKS] = {item.nodeid: item.get_closest_marker("slow") is not None
                                        for item in everything}
