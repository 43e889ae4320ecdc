import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

# the helpers' own checks (tests/support.py) report what they compared, as the tests' asserts do
pytest.register_assert_rewrite("tests.support")


# The suite runs on three pytest-xdist workers, each test file whole on one of them (`-n 3 --dist loadfile`,
# pyproject.toml), so a file's module fixtures (a federation that several tests read) are built once, as in a
# single process. `--dist loadgroup` with `xdist_group` marks was used before: with pytest 9.2 and
# pytest-xdist 3.8 it silently does nothing (xdist tags a group by assigning `item._nodeid`, which pytest 9.2's
# `nodeid` no longer reads), and the tests of one file were spread over both workers. Fixed ports: only
# tests/integration/test_deployment_docs.py binds docs/deployment.md's 9092-9097, and only
# tests/integration/test_flwr_run.py the local SuperLink's 39091-39093 (flwr/cli/constant.py); every
# other deployment test takes free ports. `-n 0` runs everything in this process instead.


# ---- The order the workers take the files in ----
# pytest-xdist hands whole files to the workers in collection order (`--no-loadscope-reorder`, pyproject.toml;
# its default order is by number of tests, which leaves the long files of two tests, the deployments, for the
# end, with one worker idle beside them). Longest first is what keeps both busy to the end: the seconds are
# measured on the 2-core machine (idle, `--durations`), and a file not listed sorts after these, integration
# before unit. The order changes when a test runs, never what it checks.
LONGEST_FIRST = {
    "integration/test_containers.py": 400, "integration/test_deployment.py": 370,
    "integration/test_deployment_docs.py": 221,
    "integration/test_interrupt_federation.py": 112, "integration/test_flwr_run.py": 74,
    "integration/test_simulate_federation.py": 70, "integration/test_survival_federation.py": 78,
    "integration/test_privacy_audit_federation.py": 63, "integration/test_secagg_federation.py": 55,
    "integration/test_outcome_kinds_federation.py": 47, "integration/test_kinds_sibling_federations.py": 40,
    "integration/test_ray_cluster.py": 35, "unit/test_synthetic_outcomes.py": 35,
}


def _file_cost(item) -> tuple[float, int]:
    path = item.path.as_posix()
    for name, seconds in LONGEST_FIRST.items():
        if path.endswith("tests/" + name):
            return -seconds, 0
    return 0.0, 0 if "/tests/integration/" in path else 1


def pytest_collection_modifyitems(config, items):
    items.sort(key=_file_cost)  # stable: a file's tests keep their order, and stay together


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
