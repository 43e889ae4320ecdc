"""The suite's own layout: tests/unit/ is the fast lane (`pytest -m "not slow"`), tests/integration/ the slow one
(real federations, real processes). A slow test in unit/ would slow every quick run; a test in integration/
outside the slow lane would start federations in it. Checked on the collection pytest itself makes, after
every hook (tests/integration/conftest.py marks its tests slow)."""

import json
import subprocess
import sys

import pytest

from tests.support import ROOT

COLLECT = """
import json, sys
import pytest

class Marks:
    items = {}

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items):
        self.items = {item.nodeid: item.get_closest_marker("slow") is not None for item in items}

marks = Marks()
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-n", "0", "tests"], plugins=[marks])
print("SLOW-MARKS " + json.dumps(marks.items))
sys.exit(code)
"""


def _whole_suite_collected(config: pytest.Config) -> bool:
    """Whether this session collected every test of tests/ (no file, directory, -k or node id narrowed it)."""
    args = [arg.split("::")[0] for arg in config.args]
    whole = {ROOT.resolve(), (ROOT / "tests").resolve()}
    return (config.getoption("keyword") == "" and all((config.invocation_params.dir / a).resolve() in whole
                                                      for a in args))


@pytest.fixture(scope="module")
def slow(request) -> dict[str, bool]:
    """Every test the suite collects -> whether it carries the `slow` marker.

    From this session's own collection when it covered the whole suite (tests/conftest.py records it after
    every hook, deselected tests included); otherwise from a collection of the whole suite in a subprocess."""
    from tests.conftest import SLOW_MARKS

    marks = request.config.stash.get(SLOW_MARKS, None)
    if marks is not None and _whole_suite_collected(request.config):
        return marks
    proc = subprocess.run([sys.executable, "-c", COLLECT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("SLOW-MARKS ")]
    return json.loads(line.removeprefix("SLOW-MARKS "))


def test_no_unit_test_is_marked_slow(slow):
    unit = {test: marked for test, marked in slow.items() if test.startswith("tests/unit/")}
    assert len(unit) > 300, sorted(unit)
    assert [test for test, marked in unit.items() if marked] == []


def test_every_test_is_in_unit_or_integration_and_every_integration_test_is_slow(slow):
    assert [test for test in slow if not test.startswith(("tests/unit/", "tests/integration/"))] == []
    integration = {test: marked for test, marked in slow.items() if test.startswith("tests/integration/")}
    assert len(integration) > 40, sorted(integration)
    assert [test for test, marked in integration.items() if not marked] == []
