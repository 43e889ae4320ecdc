"""The rule for names that become file names: a hospital's name (its ledger `privacy/<name>.json`, its audit
log, its CSV from `fedhealth synth`, its key folder) and a study's name (its run directory, its files config).

Why a rule and not an escape: a name is also what an operator reads in a report, a ledger and a terminal,
and what a hospital types into its node config; a name that is one plain word can be all of these at
once. So a name holds only ASCII letters, digits, `-`, `_` and `.`, starts with a letter or a digit (no
hidden file, no `.` or `..`, no `-x` a command line takes for an option; the rule of the key folders of
`fedhealth.security.certs` too), and has at most `MAX_NAME` characters. The rule is checked where a name is read (the
study config, a hospital's node config, the `--hospital` options), and the error shows the offending
character escaped (`repr`), never raw.
"""

from __future__ import annotations

import string

from fedhealth.errors import terminal_safe

MAX_NAME = 64
ALLOWED = frozenset(string.ascii_letters + string.digits + "-_.")
RULE = f"letters, digits, '-', '_' and '.', starting with a letter or digit, at most {MAX_NAME} characters"


def name_problem(name: object, *, max_length: int = MAX_NAME) -> str | None:
    """Why `name` cannot be a name (one phrase, its offending character escaped), or None when it can."""
    if not isinstance(name, str):
        return f"a name is text, not {type(name).__name__}"
    if not name:
        return f"a name cannot be empty; use {RULE}"
    bad = next((c for c in name if c not in ALLOWED), None)
    if bad is not None:
        return f"the character {terminal_safe(repr(bad))} is not allowed in a name; use {RULE}"
    if not name[0].isalnum():  # no hidden file, no `.` or `..`, nothing a command line reads as an option
        return f"a name cannot start with {name[0]!r}; use {RULE}"
    if len(name) > max_length:
        return f"{len(name)} characters is too long for a name; use {RULE}"
    return None


def shown(name: object, limit: int = 40) -> str:
    """A name as a message may quote it: `repr` (so escapes stay escapes), shortened past `limit` characters."""
    text = repr(name)
    return terminal_safe(text if len(text) <= limit else text[: limit - 4] + "...'")


def check_name(name: object, key: str) -> str:
    """`name` when it follows the rule; ValueError naming `key` (and the value, escaped) otherwise."""
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(f"{key} {shown(name)}: {problem}")
    return name  # type: ignore[return-value]
