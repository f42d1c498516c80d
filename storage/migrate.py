"""Migration files shared by both backends: numbered plain SQL, one folder per backend.

`storage/migrations/<backend>/NNN_name.sql` files are applied in version order by the
backend's `open()` and recorded in `schema_migrations (version, name, applied_at)`.
Applied files must never be edited; add a new numbered file instead.

(This module is not named `migrations.py` so it cannot be confused with the
`storage/migrations/` data folder: both would claim the import name `storage.migrations`.)
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources

_FILE_NAME = re.compile(r"^(\d+)_([A-Za-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(backend: str) -> list[Migration]:
    """All migrations of `backend` ("postgresql" or "sqlite"), lowest version first."""
    folder = resources.files("storage").joinpath("migrations", backend)
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise RuntimeError(f"two {backend} migrations share version {version}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    if not found:
        raise RuntimeError(f"no {backend} migrations found (is the package data installed?)")
    return [found[version] for version in sorted(found)]


def pending_migrations(migrations: list[Migration], applied: set[int]) -> list[Migration]:
    """The migrations not yet recorded. Versions recorded by newer code are left alone so an
    older replica can still start during a rolling deploy."""
    return [migration for migration in migrations if migration.version not in applied]


def split_statements(script: str) -> list[str]:
    """Split a migration into single statements (sqlite3 `execute` runs only one).

    `executescript` would do it, but it COMMITs first, which would break the one
    transaction a migration and its `schema_migrations` record must share.
    `complete_statement` knows about literals, comments and trigger bodies.
    """
    statements, current = [], ""
    *pieces, last = script.split(";")
    for piece in pieces:
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                statements.append(current.strip())
            current = ""
    # Whatever follows the last ";" (a comment, or a statement without ";") runs as is.
    if (current + last).strip():
        statements.append((current + last).strip())
    return statements
