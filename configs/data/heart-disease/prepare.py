"""Turn the four UCI Heart Disease "processed" files into one CSV per site, with a header.

    .venv/bin/python configs/data/heart-disease/prepare.py            write the CSVs (only if they changed)
    .venv/bin/python configs/data/heart-disease/prepare.py --check    exit 1 if a CSV is missing or stale
    .venv/bin/python configs/data/heart-disease/prepare.py --summary  also print per-site counts as JSON

Input: ``configs/data/heart-disease/raw/processed.{cleveland,hungarian,switzerland,va}.data``, the
original UCI files byte for byte (comma-separated, no header, ``?`` for a missing value, 14 columns).
Their SHA-256 is checked against the values recorded below (and in the README) before anything is
written, so a corrupted or edited raw file is refused rather than converted.

Output: ``configs/data/heart-disease/{cleveland,hungary,switzerland,va_long_beach}.csv`` with the
header ``age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num``.

The conversion changes the representation only, never a value:

* ``?`` becomes an empty cell;
* a number whose value is integral is written as an integer (``63.0`` -> ``63``, ``1.0`` -> ``1``);
* any other number is written in plain decimal notation with a leading zero (``.7`` -> ``0.7``,
  ``-.5`` -> ``-0.5``), with exactly the digits of the source.

Nothing is imputed, clipped, recoded or dropped: zeros that are really missing-value markers
(``chol`` = 0 at every Swiss patient, ``chol``/``trestbps`` = 0 at Long Beach) stay 0, rows with
missing values stay, and ``num`` keeps its 0-4 coding. Deciding what is valid is the validator's job
(see ``schema.toml``). A token that is neither ``?`` nor a number, or a row without 14 fields, stops
the script with an error naming the file and line.

The script needs no network and is idempotent: a CSV whose content would not change is not rewritten,
and files are replaced atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

from fedhealth.durable import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[3]
DATA_DIR = ROOT / "configs" / "data" / "heart-disease"

COLUMNS: tuple[str, ...] = (
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalach",
    "exang",
    "oldpeak",
    "slope",
    "ca",
    "thal",
    "num",
)
MISSING_TOKEN = "?"

# raw file -> (output CSV, SHA-256 of the original UCI file, expected number of rows)
SITES: dict[str, tuple[str, str, int]] = {
    "processed.cleveland.data": (
        "cleveland.csv",
        "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8",
        303,
    ),
    "processed.hungarian.data": (
        "hungary.csv",
        "d1ad108f785768cd3d7e82dc522e6f5a61eea93cccfb3a46ee8076f73fc3d796",
        294,
    ),
    "processed.switzerland.data": (
        "switzerland.csv",
        "834a405ccf5b66ab4056bb77794adc8df0b7125186454c0a1d002d33c6c3b314",
        123,
    ),
    "processed.va.data": (
        "va_long_beach.csv",
        "e7c93d8d0d2acdadfa4c5e8de768e2191e7f618b952e29623f1f0d5949ff6b8f",
        200,
    ),
}


class RawDataError(ValueError):
    """A raw file is not the expected UCI file, or a line of it cannot be read."""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def format_value(token: str, where: str) -> str:
    """One raw cell as it is written to the CSV: '' for missing, integers without a decimal part."""
    token = token.strip()
    if token == MISSING_TOKEN:
        return ""
    try:
        value = Decimal(token)
    except InvalidOperation:
        raise RawDataError(f"{where}: {token!r} is neither {MISSING_TOKEN!r} nor a number") from None
    if not value.is_finite():
        raise RawDataError(f"{where}: {token!r} is not a finite number")
    if value == value.to_integral_value():
        return str(int(value))
    return format(value, "f")


def convert(raw_path: Path, expected_rows: int) -> tuple[str, dict]:
    """The CSV text for one raw file, and counts describing it."""
    text = raw_path.read_text(encoding="ascii")
    out = io.StringIO()
    out.write(",".join(COLUMNS) + "\n")
    missing = dict.fromkeys(COLUMNS, 0)
    num_counts: dict[str, int] = {}
    zeros = {"trestbps": 0, "chol": 0}
    rows = 0
    rows_with_missing = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        tokens = line.split(",")
        if len(tokens) != len(COLUMNS):
            raise RawDataError(f"{raw_path.name}:{line_no}: {len(tokens)} fields, expected {len(COLUMNS)}")
        cells = [
            format_value(tok, f"{raw_path.name}:{line_no}:{col}") for tok, col in zip(tokens, COLUMNS, strict=True)
        ]
        for col, cell in zip(COLUMNS, cells, strict=True):
            if cell == "":
                missing[col] += 1
            elif col in zeros and Decimal(cell) == 0:
                zeros[col] += 1
        rows_with_missing += "" in cells
        num_counts[cells[-1]] = num_counts.get(cells[-1], 0) + 1
        out.write(",".join(cells) + "\n")
        rows += 1
    if rows != expected_rows:
        raise RawDataError(f"{raw_path.name}: {rows} rows, expected {expected_rows}")
    positives = sum(n for label, n in num_counts.items() if label not in ("", "0"))
    stats = {
        "rows": rows,
        "positives_num_gt_0": positives,
        "positive_rate": round(positives / rows, 4),
        "num_counts": dict(sorted(num_counts.items())),
        "missing_per_column": {c: n for c, n in missing.items() if n},
        "rows_with_any_missing": rows_with_missing,
        "zero_values": zeros,
    }
    return out.getvalue(), stats


def write_if_changed(path: Path, content: str) -> bool:
    """Atomically replace ``path`` with ``content`` unless it already holds exactly that."""
    data = content.encode("ascii")
    if path.exists() and path.read_bytes() == data:
        return False
    atomic_write_bytes(path, data, mode=0o644)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--raw-dir", type=Path, default=DATA_DIR / "raw", help="folder holding the UCI processed.*.data"
    )
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR, help="folder for the per-site CSVs")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a CSV is missing or out of date")
    parser.add_argument("--summary", action="store_true", help="print per-site counts as JSON")
    parser.add_argument(
        "--skip-hash-check",
        action="store_true",
        help="convert raw files whose SHA-256 differs from the recorded UCI originals (not recommended)",
    )
    args = parser.parse_args(argv)

    # Read and check every raw file before writing anything, so a bad file leaves all CSVs untouched.
    converted: list[tuple[Path, str, dict]] = []
    try:
        for raw_name, (csv_name, expected_sha, expected_rows) in SITES.items():
            raw_path = args.raw_dir / raw_name
            if not raw_path.is_file():
                raise RawDataError(f"{raw_path}: missing")
            digest = sha256_of(raw_path)
            if digest != expected_sha and not args.skip_hash_check:
                raise RawDataError(f"{raw_path}: SHA-256 {digest} differs from the UCI original {expected_sha}")
            content, stats = convert(raw_path, expected_rows)
            stats["raw_sha256"] = digest
            converted.append((args.out_dir / csv_name, content, stats))
    except RawDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    summary: dict[str, dict] = {}
    stale: list[str] = []
    for out_path, content, stats in converted:
        summary[out_path.stem] = stats
        if args.check:
            current = out_path.read_bytes() if out_path.exists() else None
            state = "up to date" if current == content.encode("ascii") else "STALE"
            if state == "STALE":
                stale.append(str(out_path))
        else:
            state = "written" if write_if_changed(out_path, content) else "unchanged"
        shown = out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path
        print(f"{shown}: {stats['rows']} rows, {stats['positives_num_gt_0']} with num>0, {state}", file=sys.stderr)
    if args.summary:
        print(json.dumps(summary, indent=2, sort_keys=True))
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
