"""The harness of the hostile-input tables (tests/unit/test_hostile_*.py): one bad input, run as a user runs
the command, and the four things every refusal must hold to.

A case lays out a workspace (data files carry planted patient values, `SENTINELS`), runs one `fedhealth`
command in it and asserts:

1. the exit code (0 ok, 1 failed/unusable, 2 bad input, 3 running, 130 interrupted);
2. a message that names what is wrong (each of `names` appears in stdout or stderr);
3. no traceback (unless the case asks for `--debug`);
4. no planted patient value in stdout or stderr;
5. no file created, changed or removed outside the paths the case allows (by default the workspace's
   `out/`), the workspace's parent included (a name such as `../x` must not escape).

Cases run in this process through typer's runner (fast) unless `subprocess=True`, which runs
`python -m fedhealth.cli` the way a user does (for what only a real process shows: signals, interpreter exit).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import TOY_SCHEMA, run_cli, toy_frame

# Values planted in hospitals' files: none may ever reach a terminal. Each is a value no message, path or
# default of fedhealth contains by chance.
SENTINELS = ("87.6543", "51.2468", "Zq7-patient")


def plant(frame):
    """A toy hospital's records with the sentinel values in them (two ages, one free-text column)."""
    frame = frame.copy()
    frame.loc[0, "age"] = SENTINELS[0]
    frame.loc[1, "age"] = SENTINELS[1]
    frame["note"] = SENTINELS[2]
    return frame


def write_hospital(folder: Path, name: str = "toy.csv", n: int = 40, seed: int = 0) -> Path:
    """A usable toy hospital file (with planted values) and its schema `schema.toml` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "schema.toml").write_text(TOY_SCHEMA)
    path = folder / name
    plant(toy_frame(n, seed)).to_csv(path, index=False)
    return path


@dataclass
class Hostile:
    """One hostile input: `args` (a list, or a function of the workspace giving one), `setup` to lay out the
    workspace first, the expected exit code and the words the message must contain (case-insensitive)."""

    id: str
    args: list[str] | Callable[[Path], list[str]]
    exit_code: int
    names: tuple[str, ...] = ()
    setup: Callable[[Path], None] | None = None
    allowed: tuple[str, ...] = ("out",)  # workspace-relative paths a command may write under
    subprocess: bool = False
    extra: Callable[[Path, str], None] | None = field(default=None, repr=False)  # more checks: (workspace, output)

    def __str__(self) -> str:
        return self.id


def _snapshot(root: Path) -> dict[str, str]:
    files = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                files[str(path.relative_to(root))] = "special"
                continue
            files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def check(case: Hostile, tmp_path: Path) -> str:
    """Run `case` in a fresh workspace under `tmp_path` and assert the five rules; returns the output."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    if case.setup is not None:
        case.setup(workspace)
    before = _snapshot(tmp_path)
    args = case.args(workspace) if callable(case.args) else list(case.args)
    if case.subprocess:
        done = run_cli(*args, timeout=120)
        code, output = done.returncode, done.stdout + done.stderr
        crashed = None
    else:
        from tests.support import invoke_cli

        result = invoke_cli(*args)
        code, output = result.exit_code, result.output  # stdout and stderr, interleaved
        crashed = result.exception if not isinstance(result.exception, SystemExit) else None
    assert crashed is None, f"{case.id}: uncaught {type(crashed).__name__}: {crashed}"
    assert code == case.exit_code, f"{case.id}: exit {code}, expected {case.exit_code}\n{output}"
    lowered = output.lower()
    for word in case.names:
        assert word.lower() in lowered, f"{case.id}: the message does not name {word!r}\n{output}"
    if "--debug" not in args:
        assert "Traceback" not in output and "───── locals" not in output, f"{case.id}: a traceback\n{output}"
    for value in SENTINELS:
        assert value not in output, f"{case.id}: a planted patient value {value!r} reached the terminal\n{output}"
    after = _snapshot(tmp_path)
    allowed = tuple(str((workspace / a).relative_to(tmp_path)) for a in case.allowed)
    changed = sorted(p for p in set(before) | set(after)
                     if before.get(p) != after.get(p) and not any(p == a or p.startswith(a + os.sep)
                                                                  for a in allowed))
    assert not changed, f"{case.id}: files changed outside {case.allowed}: {changed}\n{output}"
    if case.extra is not None:
        case.extra(workspace, output)
    return output
