"""Peak memory of `fedhealth validate` on a large hospital file, against the old full read; print one JSON line.

    .venv/bin/python benchmarks/bench_validate.py                  a ~200 MB CSV
    .venv/bin/python benchmarks/bench_validate.py --megabytes 50

Writes a CSV of the toy schema's records (tests/support.py: age, glucose, smoker, stage, outcome,
consent) of about `--megabytes` MB in a temporary folder, then measures, each in a fresh process:

- `validate`: `python -m fedhealth.cli validate` as a user runs it (the file read in blocks);
- `full_read`: the path `validate` took before (pandas `read_csv` of the whole file, every cell as text,
  then the same checks on that one table).

Peak RSS is `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`, read by a small parent process of its own
for each measurement, so one figure never includes the other. Goal: `validate` under 2x the file.
Exactly one JSON line goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# One measurement: run the command as a child and report the child's peak RSS (KiB on Linux) and seconds.
PARENT = """
import resource, subprocess, sys, time, json
t0 = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": done.returncode, "seconds": time.perf_counter() - t0,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "tail": (done.stdout + done.stderr)[-400:]}))
"""

FULL_READ = """
import sys
import pandas as pd
from fedhealth.data.validation import validate_table
from fedhealth.study.schema import load_schema
schema = load_schema(sys.argv[2])
frame = pd.read_csv(sys.argv[1], dtype=str, keep_default_na=False)
report = validate_table(frame, schema, sys.argv[1]).report
print("usable" if report.ok else "NOT usable", report.rows)
"""


def write_csv(path: Path, megabytes: float) -> int:
    """Toy records in blocks until the file reaches `megabytes`; returns the number of rows."""
    from tests.support import toy_frame

    rows, seed = 0, 0
    target = megabytes * 1e6
    with open(path, "w", newline="") as f:
        while f.tell() < target:
            block = toy_frame(200_000, seed)
            block.to_csv(f, index=False, header=(seed == 0))
            rows += len(block)
            seed += 1
    return rows


def measure(command: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", PARENT, *command], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    if done.returncode != 0:
        raise SystemExit(f"measurement failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    if result["rc"] not in (0, 1):
        raise SystemExit(f"{command[:4]}: exit {result['rc']}: {result['tail']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=200.0)
    args = parser.parse_args()
    from tests.support import TOY_SCHEMA

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "schema.toml").write_text(TOY_SCHEMA)
        data = folder / "big.csv"
        t0 = time.perf_counter()
        rows = write_csv(data, args.megabytes)
        write_seconds = time.perf_counter() - t0
        size = data.stat().st_size
        new = measure([sys.executable, "-m", "fedhealth.cli", "validate", "--schema", str(folder / "schema.toml"),
                       "--data", str(data)])
        old = measure([sys.executable, "-c", FULL_READ, str(data), str(folder / "schema.toml")])
    figures = {"file_bytes": size, "rows": rows, "write_seconds": round(write_seconds, 1)}
    for name, m in (("validate", new), ("full_read", old)):
        peak = m["maxrss_kib"] * 1024
        figures[name] = {"peak_rss_bytes": peak, "peak_over_file": round(peak / size, 2),
                         "seconds": round(m["seconds"], 1), "exit": m["rc"]}
        if m["rc"] != 0:
            print(f"{name}: exit {m['rc']}: {m['tail']}", file=sys.stderr)
    figures["full_read_over_validate"] = round(figures["full_read"]["peak_rss_bytes"]
                                               / figures["validate"]["peak_rss_bytes"], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
