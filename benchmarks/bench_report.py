"""How long the study report takes for a large federation; print one JSON line.

    .venv/bin/python benchmarks/bench_report.py                 100 hospitals (configs/large.toml), 3 rounds
    .venv/bin/python benchmarks/bench_report.py --rounds 5 --repeats 5

A real run first: `configs/large.toml` (100 hospitals) with its rounds cut to `--rounds`, through
`fedhealth.experiments.simulate.simulate` (federation under SecAgg+, local-only and pooled references, summary,
and the report once). Then `build_report` alone is timed `--repeats` times on that run directory in
this process; the first timing includes importing Matplotlib and Jinja2, reported apart as
`first_s`. Goal: under 10 s for 100 hospitals. It also states what a contribution estimate costs in
federations at 8 hospitals (leave-one-out, exact Shapley, each sampled permutation). Exactly one
JSON line goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "large.toml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from fedhealth.data.study_file import load_config
    from fedhealth.experiments.simulate import simulate
    from fedhealth.runs import rundir

    cfg = load_config(args.config, [f"federation.rounds={args.rounds}"])
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        run_dir = rundir.create_run_dir(cfg, Path(tmp) / "run")
        print(f"running {cfg.name}: {len(cfg.hospitals)} hospitals, {args.rounds} rounds", file=sys.stderr)
        started = time.perf_counter()
        simulate(cfg, run_dir)
        run_s = time.perf_counter() - started

        from fedhealth.reporting.report import build_report

        timings = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            path = build_report(run_dir)
            timings.append(time.perf_counter() - t0)
        figures = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
        result = {
            "bench": "report", "hospitals": len(cfg.hospitals), "rounds": args.rounds, "cpus": os.cpu_count(),
            "report_s_median": round(statistics.median(timings), 3), "first_s": round(timings[0], 3),
            "report_s": [round(t, 3) for t in timings], "html_bytes": path.stat().st_size, "figures": figures,
            "run_s": round(run_s, 1), "goal_under_10_s": statistics.median(timings) < 10.0,
            # What `fedhealth contribution` costs, in federations, at 8 hospitals (the default study):
            "contribution_federations_at_8": {"leave_one_out": 8 + 1, "exact_shapley": 2**8 - 1,
                                              "per_sampled_permutation_at_most": 8},
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
