import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

# the helpers' own checks (tests/support.py) report what they compared, as the tests' asserts do
pytest.register_assert_rewrite("tests.support")
