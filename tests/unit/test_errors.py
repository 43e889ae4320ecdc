"""The table in fedhealth/errors.py is the map a user reads to catch one kind of failure: it must stay true."""

from __future__ import annotations

import importlib
import re

import fedhealth.errors as errors


def _table() -> list[tuple[str, str, str]]:
    rows, category = [], None
    body = errors.__doc__.split("=====\ncategory")[1].split("=====\n\n")[0]
    for line in body.splitlines()[2:]:
        head, rest = line[:29].strip(), line[29:].strip()
        if head:
            category = head
        for module, names in re.findall(r"([\w.]+): ([\w, ]+?)(?:;|$|\()", rest):
            for name in names.split(","):
                rows.append((category, module, name.strip()))
    return rows


def test_every_error_named_in_the_table_exists_and_belongs_to_its_category():
    rows = _table()
    assert len(rows) >= 25
    for category, module, name in rows:
        cls = getattr(importlib.import_module(f"fedhealth.{module}"), name)
        assert issubclass(cls, getattr(errors, category)), (category, module, name)


def test_every_category_is_exported_and_derives_from_the_base():
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.FedhealthError)
