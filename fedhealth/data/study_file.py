"""A study read from its TOML file: overrides applied, every data file it names found, read, checked and
pinned by its SHA-256, then validated as a `StudyConfig`.

Here, not in `fedhealth.study`, because resolving a hospital's file reads patient data: the study
definition itself stays free of file I/O beyond its own TOML."""

from __future__ import annotations

from pathlib import Path

from fedhealth.data.files import resolve_study_files
from fedhealth.study.config import ConfigError, StudyConfig, apply_overrides, machine_problems, parse_config
from fedhealth.study.textfile import TextFileError, read_toml


def load_config(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Read, override and validate a TOML study config; every failure is a ConfigError naming the file."""
    path = Path(path)
    if not path.exists():  # a FIFO or a device is refused by read_utf8, naming what it is
        raise ConfigError(f"{path}: config file not found")
    try:
        data = read_toml(path)
    except TextFileError as err:
        raise ConfigError(str(err)) from None
    data.setdefault("name", path.stem)
    data = apply_overrides(data, overrides or [])
    problems = resolve_study_files(data, path.resolve().parent)
    if problems:
        raise ConfigError("\n".join(f"{path}: {p}" if not p.startswith(str(path)) else p for p in problems))
    cfg = parse_config(data, str(path))
    problems = machine_problems(cfg)
    if problems:
        raise ConfigError("\n".join(f"{path}: {p}" for p in problems))
    return cfg
