"""Split the NCCTG lung cancer data (``raw/lung.csv``, as shipped in lifelines 0.30.3) into one CSV per institution.

    .venv/bin/python configs/data/lung/prepare.py            write the site CSVs (only if they changed)
    .venv/bin/python configs/data/lung/prepare.py --check    write nothing; exit 1 naming each CSV that differs
    .venv/bin/python configs/data/lung/prepare.py --tables   also print the README's tables, computed from the CSVs

Input: ``configs/data/lung/raw/lung.csv``, the file ``lifelines/datasets/lung.csv`` of the wheel
``lifelines-0.30.3-py3-none-any.whl`` byte for byte (228 patients, 10 columns, header
``inst,time,status,age,sex,ph.ecog,ph.karno,pat.karno,meal.cal,wt.loss``, an empty cell for a missing
value). Its SHA-256 is checked against the value recorded below (and in the README) before anything
is written, so a corrupted, edited or re-exported raw file is refused rather than split.

Output: one CSV per site in ``configs/data/lung/``:

* ``inst-NN.csv`` (``NN`` = the institution code, two digits) for every institution with at least
  ``MIN_PATIENTS`` (15) patients;
* ``other.csv`` for the patients of every smaller institution together with the patient whose
  ``inst`` is missing.

Each site CSV is the raw header followed by that site's raw lines, **copied verbatim** and in the raw
file's order: every column is kept (``inst`` too, so the merge into ``other`` stays visible), no value
is reformatted, recoded, imputed or dropped, and the line ends are ``\\n`` as in the raw file. So the
site files together hold exactly the raw file's 228 data lines, each once.

The script needs no network and is idempotent: a CSV whose content would not change is not rewritten,
and files are replaced atomically. ``--tables`` reads the site CSVs back from disk with pandas and
prints the counts, follow-up and missing-value tables of the README as Markdown.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path

from fedhealth.durable import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[3]
DATA_DIR = ROOT / "configs" / "data" / "lung"

RAW_NAME = "lung.csv"
# SHA-256 of lifelines/datasets/lung.csv inside lifelines-0.30.3-py3-none-any.whl (also the wheel's RECORD entry)
RAW_SHA256 = "16ebd02c38bbb5708186d600cff80ad84d0764974619436f83ba4a605e77eb44"
RAW_ROWS = 228
COLUMNS: tuple[str, ...] = (
    "inst",
    "time",
    "status",
    "age",
    "sex",
    "ph.ecog",
    "ph.karno",
    "pat.karno",
    "meal.cal",
    "wt.loss",
)
MIN_PATIENTS = 15  # an institution with fewer patients is merged into OTHER
OTHER = "other"


class RawDataError(ValueError):
    """The raw file is not the recorded lifelines file, or a line of it cannot be read."""


def site_name(inst: int) -> str:
    return f"inst-{inst:02d}"


def parse_inst(cell: str, where: str) -> int | None:
    """The institution code of one raw line (``'3.0'`` -> 3), or None when the cell is empty."""
    if cell == "":
        return None
    try:
        value = float(cell)
    except ValueError:
        raise RawDataError(f"{where}: inst {cell!r} is not a number") from None
    if not value.is_integer() or value < 0:
        raise RawDataError(f"{where}: inst {cell!r} is not a non-negative integral code")
    return int(value)


def read_raw(raw_path: Path) -> tuple[str, list[tuple[int | None, str]]]:
    """The raw header line and, per data line, its institution code and the line itself (without ``\\n``)."""
    text = raw_path.read_bytes().decode("ascii")
    if "\r" in text or '"' in text:
        raise RawDataError(f"{raw_path.name}: unexpected carriage return or quote character")
    if not text.endswith("\n"):
        raise RawDataError(f"{raw_path.name}: the last line has no line end")
    header, *lines = text[:-1].split("\n")
    if tuple(header.split(",")) != COLUMNS:
        raise RawDataError(f"{raw_path.name}:1: header {header!r}, expected {','.join(COLUMNS)!r}")
    rows: list[tuple[int | None, str]] = []
    for line_no, line in enumerate(lines, start=2):
        cells = line.split(",")
        if len(cells) != len(COLUMNS):
            raise RawDataError(f"{raw_path.name}:{line_no}: {len(cells)} fields, expected {len(COLUMNS)}")
        rows.append((parse_inst(cells[0], f"{raw_path.name}:{line_no}"), line))
    if len(rows) != RAW_ROWS:
        raise RawDataError(f"{raw_path.name}: {len(rows)} data rows, expected {RAW_ROWS}")
    return header, rows


def split_sites(header: str, rows: list[tuple[int | None, str]]) -> dict[str, str]:
    """CSV text per site file name: the large institutions in code order, then ``other``."""
    counts: dict[int, int] = {}
    for inst, _ in rows:
        if inst is not None:
            counts[inst] = counts.get(inst, 0) + 1
    large = sorted(inst for inst, n in counts.items() if n >= MIN_PATIENTS)
    lines: dict[str, list[str]] = {site_name(inst): [] for inst in large}
    lines[OTHER] = []
    for inst, line in rows:
        site = site_name(inst) if inst in large else OTHER
        lines[site].append(line)
    return {f"{site}.csv": "".join(f"{line}\n" for line in [header, *site_lines]) for site, site_lines in lines.items()}


def write_if_changed(path: Path, data: bytes) -> bool:
    """Atomically replace ``path`` with ``data`` unless it already holds exactly that."""
    if path.exists() and path.read_bytes() == data:
        return False
    atomic_write_bytes(path, data, mode=0o644)
    return True


def km_median(time, event) -> float | None:
    """Kaplan-Meier median: the first time at which the estimated survival is <= 0.5 (None if never)."""
    import numpy as np

    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=bool)
    surv = 1.0
    for t in np.unique(time[event]):
        at_risk = int((time >= t).sum())
        surv *= 1.0 - int(((time == t) & event).sum()) / at_risk
        if surv <= 0.5 + 1e-12:
            return float(t)
    return None


def tables(out_dir: Path, site_files: list[str]) -> str:
    """The README's Markdown tables, computed from the site CSVs as they are on disk."""
    import pandas as pd

    frames = {Path(name).stem: pd.read_csv(out_dir / name) for name in site_files}
    frames["all"] = pd.concat(frames.values(), ignore_index=True)

    def fmt(days: float | None) -> str:
        return "not reached" if days is None else f"{days:g}"

    out = io.StringIO()
    out.write(
        "| site | institution codes (patients) | patients | deaths | censored | women "
        "| median observed time (d) | median follow-up, reverse KM (d) | median survival, KM (d) |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    for site, df in frames.items():
        if site == "all":
            codes = f"{df['inst'].nunique()} codes + 1 missing" if df["inst"].isna().any() else ""
        else:
            per_inst = df["inst"].value_counts(dropna=False).sort_index(na_position="last")
            codes = ", ".join(f"{'missing' if pd.isna(k) else int(k)} ({n})" for k, n in per_inst.items())
        deaths = int((df["status"] == 1).sum())
        censored = int((df["status"] == 0).sum())
        out.write(
            f"| `{site}` | {codes} | {len(df)} | {deaths} | {censored} | {int((df['sex'] == 2).sum())} "
            f"| {df['time'].median():g} | {fmt(km_median(df['time'], df['status'] == 0))} "
            f"| {fmt(km_median(df['time'], df['status'] == 1))} |\n"
        )
    out.write("\n| site | " + " | ".join(f"`{c}`" for c in COLUMNS) + " | rows with any missing |\n")
    out.write("| --- |" + " ---: |" * (len(COLUMNS) + 1) + "\n")
    for site, df in frames.items():
        missing = df[list(COLUMNS)].isna()
        cells = " | ".join(str(int(n)) for n in missing.sum())
        out.write(f"| `{site}` ({len(df)}) | {cells} | {int(missing.any(axis=1).sum())} |\n")
    out.write("\n| column | present (of all) | min | max | values (when at most 12 distinct) |\n")
    out.write("| --- | ---: | ---: | ---: | --- |\n")
    everyone = frames["all"]
    for column in COLUMNS:
        present = everyone[column].dropna()
        values = sorted(present.unique())
        shown = ", ".join(f"{v:g}" for v in values) if len(values) <= 12 else f"{len(values)} distinct"
        out.write(f"| `{column}` | {len(present)} | {present.min():g} | {present.max():g} | {shown} |\n")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=DATA_DIR / "raw" / RAW_NAME, help="the lifelines lung.csv")
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR, help="folder for the per-site CSVs")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a CSV is missing or differs")
    parser.add_argument("--tables", action="store_true", help="print the README's tables, read from the site CSVs")
    args = parser.parse_args(argv)

    try:
        if not args.raw.is_file():
            raise RawDataError(f"{args.raw}: missing")
        digest = hashlib.sha256(args.raw.read_bytes()).hexdigest()
        if digest != RAW_SHA256:
            raise RawDataError(
                f"{args.raw}: SHA-256 {digest} differs from the recorded lifelines 0.30.3 lung.csv {RAW_SHA256}; "
                "refusing to split it (restore the original file, see configs/data/lung/README.md)"
            )
        sites = split_sites(*read_raw(args.raw))
    except RawDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    differing: list[str] = []
    for name, content in sites.items():
        path = args.out_dir / name
        data = content.encode("ascii")
        if args.check:
            state = "up to date" if path.exists() and path.read_bytes() == data else "DIFFERS"
            if state == "DIFFERS":
                differing.append(str(path))
        else:
            state = "written" if write_if_changed(path, data) else "unchanged"
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"{shown}: {content.count(chr(10)) - 1} rows, {state}", file=sys.stderr)
    # A site file that this split does not produce (say, from an older threshold) is stale as well.
    for path in sorted(args.out_dir.glob("inst-*.csv")):
        if path.name not in sites:
            differing.append(f"{path} (not produced by this split)")
    if differing:
        print("differs from raw/lung.csv: " + ", ".join(differing), file=sys.stderr)
        return 1
    if args.tables:
        print(tables(args.out_dir, list(sites)), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
