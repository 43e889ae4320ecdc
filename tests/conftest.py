import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture
def interrupted_run():
    """Run `simulate` until a fault injected in the server's round hook stops it after round 1."""
    from fedhealth.simulate import simulate

    def run(cfg, run_dir: Path) -> None:
        def crash_after_round_one(server_round, _info):
            if server_round == 1:
                raise RuntimeError("injected fault after round 1")

        with pytest.raises(Exception, match="injected fault"):
            simulate(cfg, run_dir, on_round=crash_after_round_one)

    return run
