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
