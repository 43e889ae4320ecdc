import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

# the helpers' own checks (tests/support.py) report what they compared, as the tests' asserts do
pytest.register_assert_rewrite("tests.support")


# The suite runs on two pytest-xdist workers, each test file whole on one of them (`-n 2 --dist loadfile`,
# pyproject.toml), so a file's module fixtures (a federation that several tests read) are built once, as in a
# single process. `--dist loadgroup` with `xdist_group` marks was used before: with pytest 9.2 and
# pytest-xdist 3.8 it silently does nothing (xdist tags a group by assigning `item._nodeid`, which pytest 9.2's
# `nodeid` no longer reads), and the tests of one file were spread over both workers. Fixed ports: only
# tests/integration/test_deployment_docs.py binds docs/deployment.md's 9092-9097, and only
# tests/integration/test_flwr_run.py the local SuperLink's 39091-39093 (flwr/cli/constant.py); every
# other deployment test takes free ports. `-n 0` runs everything in this process instead.


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
