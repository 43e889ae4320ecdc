"""The federation benchmark's parts that decide whether its comparison is fair: the data and studies it writes,
and the hand-written Flower peer it runs (benchmarks/bench_federation.py, benchmarks/_flower_peer.py).

No timing is run or asserted here: the benchmark measures; these tests check that both sides get the same rows,
the same settings and the same SecAgg+ parameters, and that the peer owes nothing to fedhealth."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from fedhealth.data.hospitals import load_hospital
from fedhealth.data.study_file import load_config
from fedhealth.metrics import classification
from fedhealth.privacy.hospital_level import calibrated_secagg_params
from tests.support import ROOT

BENCH_DIR = ROOT / "benchmarks"
ROWS, TEST_ROWS = 120, 30  # small: these tests check the shape of what is written, not a federation


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_federation", BENCH_DIR / "bench_federation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _bench()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "data"
    bench.write_data(path, hospitals=bench.MAX_HOSPITALS, rows=ROWS, test_rows=TEST_ROWS)
    return path


def _study(tmp_path: Path, job, data_dir: Path, backend: str | None = None) -> Path:
    path = tmp_path / f"{job.name}.toml"
    path.write_text(bench.study_toml(job, data_dir, backend), encoding="utf-8")
    return path


@pytest.mark.parametrize("job", bench.JOBS, ids=lambda j: j.name)
def test_every_jobs_study_loads_with_fedhealths_own_loader_and_states_the_job(job, data_dir, tmp_path):
    cfg = load_config(_study(tmp_path, job, data_dir))
    assert len(cfg.hospitals) == job.hospitals and cfg.federation.rounds == job.rounds
    assert cfg.from_files and all(h.records == ROWS for h in cfg.hospitals)
    assert (cfg.model.name, cfg.model.hidden) == ("mlp", [32])
    t = cfg.training
    assert (t.local_epochs, t.batch_size, t.learning_rate, t.momentum, t.weight_decay) == (1, 64, 0.1, 0.0, 0.0)
    assert cfg.federation.cpus_per_client == 1.0
    assert cfg.federation.secure_aggregation.enabled is job.secagg
    assert (cfg.references.local_only, cfg.references.pooled, cfg.references.non_private_federation) == (
        True, False, False)
    if job.dp:
        assert (cfg.privacy.mode, cfg.privacy.noise_multiplier) == ("record", bench.NOISE_MULTIPLIER)
    else:
        assert cfg.privacy.mode == "none"


def test_the_data_are_the_same_bytes_for_the_same_seed(data_dir, tmp_path):
    again = tmp_path / "again"
    bench.write_data(again, hospitals=2, rows=ROWS, test_rows=TEST_ROWS)
    for name in ("h01.csv", "h02.csv", "schema.toml"):
        assert (again / name).read_bytes() == (data_dir / name).read_bytes(), name
    other = tmp_path / "other"
    bench.write_data(other, hospitals=1, rows=ROWS, test_rows=TEST_ROWS, seed=bench.DATA_SEED + 1)
    assert (other / "h01.csv").read_bytes() != (data_dir / "h01.csv").read_bytes()


def test_the_backend_key_is_written_only_when_given(data_dir):
    job = bench.JOBS[0]
    assert "backend" not in tomllib.loads(bench.study_toml(job, data_dir))["federation"]
    assert tomllib.loads(bench.study_toml(job, data_dir, "in-process"))["federation"]["backend"] == "in-process"


@pytest.mark.parametrize("job", [j for j in bench.JOBS if j.secagg], ids=lambda j: j.name)
def test_the_peer_gets_the_secagg_parameters_fedhealth_derives(job, data_dir, tmp_path):
    study = _study(tmp_path, job, data_dir)
    args = bench.peer_args(job, data_dir, study)
    value = {flag: args[args.index(flag) + 1] for flag in ("--num-shares", "--reconstruction-threshold",
                                                          "--max-weight", "--noise-multiplier")}
    derived = calibrated_secagg_params(load_config(study))
    assert int(value["--num-shares"]) == derived.num_shares
    assert int(value["--num-shares"]) % 2 == 1 or derived.num_shares == job.hospitals  # even counts break SecAgg+
    assert int(value["--reconstruction-threshold"]) == derived.reconstruction_threshold
    assert float(value["--max-weight"]) >= ROWS  # a FedAvg weight above it would overflow the masked sum
    assert "--secagg" in args and float(value["--noise-multiplier"]) == bench.NOISE_MULTIPLIER


def test_a_plain_job_gives_the_peer_no_secagg_and_no_dp(data_dir, tmp_path):
    job = bench.JOBS[0]
    args = bench.peer_args(job, data_dir, _study(tmp_path, job, data_dir), tmp_path / "w.npz")
    assert "--secagg" not in args and "--noise-multiplier" not in args
    assert args[args.index("--initial-weights") + 1] == str(tmp_path / "w.npz")


PEER_PROBE = """
import json, sys
import numpy as np
import _flower_peer as peer
x_train, y_train, x_test, y_test = peer._hospital(sys.argv[1])
np.savez(sys.argv[2], x_train=x_train.numpy(), y_train=y_train.numpy(), x_test=x_test.numpy(), y_test=y_test.numpy())
rng = np.random.default_rng(3)
y = (rng.random(400) < 0.4).astype(np.float32)
score = np.round(rng.random(400) + 0.3 * y, 2)  # rounded: ties, which count one half
one_class = peer.auroc(np.ones(5, dtype=np.float32), np.arange(5.0))
print(json.dumps({"auroc": peer.auroc(y, score), "one_class": repr(one_class),
                  "imported": sorted({m.split(".")[0] for m in sys.modules} & {"fedhealth", "server", "clients"})}))
"""


def test_the_peer_imports_without_fedhealth_and_reads_the_rows_fedhealth_reads(data_dir, tmp_path):
    """In a fresh interpreter that can reach only benchmarks/, the peer imports (Flower, torch) and reads
    hospital 3's file: its train and test rows are exactly the ones fedhealth loads from that file, and its
    AUROC (the rank statistic, in numpy) is fedhealth's."""
    job = bench.JOBS[2]
    cfg = load_config(_study(tmp_path, job, data_dir))
    out = tmp_path / "peer.npz"
    env = {**os.environ, "PYTHONPATH": str(BENCH_DIR), "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-c", PEER_PROBE, str(data_dir / "h03.csv"), str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert said["imported"] == []
    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.4).astype(np.float32)
    score = np.round(rng.random(400) + 0.3 * y, 2)
    assert said["auroc"] == pytest.approx(classification.roc_auc(y, score), abs=1e-12)
    assert said["one_class"] == "nan"  # one class: undefined
    split = load_hospital(cfg, 2)
    with np.load(out) as peer:
        assert peer["x_train"].shape == (ROWS - TEST_ROWS, bench.FEATURES)
        np.testing.assert_array_equal(peer["x_train"], split.x_train)
        np.testing.assert_array_equal(peer["y_train"], split.y_train)
        np.testing.assert_array_equal(peer["x_test"], split.x_test)
        np.testing.assert_array_equal(peer["y_test"], split.y_test)


def test_an_unknown_job_is_refused_with_the_valid_names(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--jobs", "5x3-plain,7x7"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "7x7" in err and "20x3-dp-secagg" in err
