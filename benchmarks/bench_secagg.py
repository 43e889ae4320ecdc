"""What SecAgg+ costs: round time and bytes per hospital, with and without it; print one JSON line.

    .venv/bin/python benchmarks/bench_secagg.py                       5, 20 and 100 hospitals, 4 rounds
    .venv/bin/python benchmarks/bench_secagg.py --hospitals 5 20 --rounds 3
    .venv/bin/python benchmarks/bench_secagg.py --hospitals 10 30 100 300 --rounds 3 --backend ray

How it measures:

* One study per size, drawn like `configs/large.toml` (tiers 10/30/60%, 200..30,000 records, logistic
  regression, one local epoch), run twice: `federation.secure_aggregation.enabled` true and false,
  nothing else different. Each run is `fedhealth.experiments.simulate.run_federation` in a fresh interpreter, so
  both pay the same start-up; secure and plain runs alternate.
* Round time is the mean over rounds >= 2 of `rounds.jsonl`'s `seconds` (fit, SecAgg+ when on,
  evaluation); round 1 also starts the Ray actors. `ratio` = secure / plain.
* Bytes are counted on the server's Grid: every training message's content serialised as Flower
  sends it (`recorddict_to_proto(...).ByteSize()`), uploads (hospital to server) and downloads,
  divided by hospitals and rounds; evaluation is identical in both modes and not counted.
  `model_bytes` is the float32 model; `upload_vs_model` the secure upload over it.
* SecAgg+ promises per-hospital cost that grows with the neighbourhood (`num_shares`, about
  2 log2 n), not with n: `upload_growth` compares upload per hospital at the largest and smallest
  sizes with log2 of their ratio of hospitals, and `secure_extra_s_per_hospital` (secure minus plain
  round time, over the hospitals) shows how the time cost per hospital grows.
* `--backend` picks the simulation backend (`federation.backend`), the same for every run.

Exactly one JSON line goes to stdout; progress goes to stderr. Exit status 1 if a run fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"


def study_toml(hospitals: int, rounds: int, secure: bool, backend: str) -> str:
    return f"""name = "bench-secagg-{hospitals}"
seed = 1234
[population]
count = {hospitals}
records_min = 200
records_max = 30000
[model]
name = "logreg"
[training]
local_epochs = 1
batch_size = 128
[federation]
rounds = {rounds}
backend = "{backend}"
[federation.secure_aggregation]
enabled = {"true" if secure else "false"}
[references]
local_only = false
pooled = false
"""


def run_job(config: Path, out: Path) -> dict[str, Any]:
    """Inside the fresh interpreter: one federation with the server's Grid counting bytes."""
    import numpy as np
    from flwr.app.message_type import MessageType
    from flwr.common.serde import recorddict_to_proto

    import fedhealth.coordinator.app as server
    from fedhealth.coordinator.grid_tap import GridTap
    from fedhealth.data.study_file import load_config
    from fedhealth.experiments.simulate import run_federation
    from fedhealth.runs import rundir

    counts = {"up": 0, "down": 0}

    def count(messages, replies):
        for m in messages:
            if m.metadata.message_type == MessageType.TRAIN:
                counts["down"] += recorddict_to_proto(m.content).ByteSize()
        for r in replies:
            if r.metadata.message_type == MessageType.TRAIN and not r.has_error():
                counts["up"] += recorddict_to_proto(r.content).ByteSize()

    original = server.run_study
    server.run_study = lambda grid, *a, **k: original(GridTap(grid, count), *a, **k)
    cfg = load_config(config)
    run_dir = rundir.create_run_dir(cfg, out)
    started = time.perf_counter()
    run_federation(cfg, run_dir)
    wall = time.perf_counter() - started
    rounds = rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE)
    later = [r["seconds"] for r in rounds if r["round"] >= 2]
    stages: dict[str, list[float]] = {}
    for row in rounds:
        if row["round"] >= 2:
            for stage, sec in (row.get("secagg_stage_seconds") or {}).items():
                stages.setdefault(stage, []).append(sec)
    n, r = len(cfg.hospitals), cfg.federation.rounds
    weights = server.initial_weights(cfg)
    secagg = json.loads((run_dir / rundir.SECAGG_FILE).read_text()) if (run_dir / rundir.SECAGG_FILE).exists() else {}
    return {
        "round_s": statistics.mean(later),
        "wall_s": wall,
        "upload_bytes_per_hospital_round": counts["up"] / (n * r),
        "download_bytes_per_hospital_round": counts["down"] / (n * r),
        "model_bytes": int(sum(np.asarray(w, dtype=np.float32).nbytes for w in weights)),
        "aggregated_rounds": sum(1 for x in rounds if x["aggregated"]),
        "num_shares": secagg.get("num_shares"),
        "threshold": secagg.get("reconstruction_threshold"),
        "stage_s": {stage: round(statistics.mean(v), 3) for stage, v in stages.items()},
    }


def launch(hospitals: int, rounds: int, secure: bool, backend: str, workdir: Path) -> dict[str, Any]:
    tag = f"{hospitals}-{'secure' if secure else 'plain'}"
    config = workdir / f"{tag}.toml"
    config.write_text(study_toml(hospitals, rounds, secure, backend))
    result = workdir / f"{tag}.json"
    proc = subprocess.run([sys.executable, __file__, "--job", str(config), str(workdir / tag), str(result)],
                          capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if proc.returncode != 0 or not result.exists():
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"bench_secagg: the {tag} run failed (exit {proc.returncode})")
    data = json.loads(result.read_text())
    if data["aggregated_rounds"] != rounds:
        raise SystemExit(f"bench_secagg: the {tag} run aggregated {data['aggregated_rounds']} of {rounds} rounds")
    print(f"  {tag}: {data['round_s']:.2f} s/round, {data['upload_bytes_per_hospital_round']:.0f} B up per "
          f"hospital per round", file=sys.stderr)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, nargs="+", default=[5, 20, 100])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run (round 1 is not timed)")
    parser.add_argument("--backend", choices=["in-process", "ray"], default="in-process",
                        help="federation.backend for every run")
    parser.add_argument("--job", nargs=3, metavar=("CONFIG", "OUT", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        config, out, result = map(Path, args.job)
        Path(result).write_text(json.dumps(run_job(config, out)))
        return
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 1 is not timed)")
    sizes = {}
    with tempfile.TemporaryDirectory(prefix="bench-secagg-") as tmp:
        for n in args.hospitals:
            print(f"{n} hospitals", file=sys.stderr)
            plain = launch(n, args.rounds, False, args.backend, Path(tmp))
            secure = launch(n, args.rounds, True, args.backend, Path(tmp))
            sizes[str(n)] = {
                "plain_round_s": round(plain["round_s"], 3),
                "secure_round_s": round(secure["round_s"], 3),
                "ratio": round(secure["round_s"] / plain["round_s"], 2),
                "secure_extra_s_per_hospital": round((secure["round_s"] - plain["round_s"]) / n, 4),
                "num_shares": secure["num_shares"],
                "threshold": secure["threshold"],
                "secure_stage_s": secure["stage_s"],
                "model_bytes": plain["model_bytes"],
                "plain_upload_bytes": round(plain["upload_bytes_per_hospital_round"]),
                "secure_upload_bytes": round(secure["upload_bytes_per_hospital_round"]),
                "secure_download_bytes": round(secure["download_bytes_per_hospital_round"]),
                "upload_vs_model": round(secure["upload_bytes_per_hospital_round"] / plain["model_bytes"], 1),
            }
    small, large = str(min(args.hospitals)), str(max(args.hospitals))
    growth = None
    if small != large:
        growth = {
            "hospitals_ratio": int(large) / int(small),
            "log2_hospitals_ratio": round(math.log2(int(large) / int(small)), 2),
            "upload_ratio": round(sizes[large]["secure_upload_bytes"] / sizes[small]["secure_upload_bytes"], 2),
        }
    print(json.dumps({"bench": "secagg", "backend": args.backend, "rounds": args.rounds, "cpus": os.cpu_count(),
                      "sizes": sizes,
                      "upload_growth": growth,
                      "goal_ratio_at_20_le_1.25": sizes.get("20", {}).get("ratio", math.nan) <= 1.25}))


if __name__ == "__main__":
    main()
