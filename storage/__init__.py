"""Conversation storage: threads and messages in PostgreSQL or an embedded SQLite file.

`create_store(os.environ.get("DATABASE_URL"))` picks the backend; `await store.open()`
connects and applies migrations. See `storage.base` for the interface and its errors.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from .base import (
    ClientMessage,
    Cut,
    Owner,
    StorageError,
    StorageUnavailable,
    Store,
    StoredMessage,
    Summary,
    ThreadNotFound,
    ThreadPosition,
    ThreadSummary,
    Turn,
    UnknownMessage,
)
from .rows import (
    new_message_id,
)

__all__ = [
    "ClientMessage",
    "Cut",
    "DEFAULT_SQLITE_PATH",
    "Owner",
    "StorageError",
    "StorageUnavailable",
    "Store",
    "StoredMessage",
    "Summary",
    "ThreadNotFound",
    "ThreadPosition",
    "ThreadSummary",
    "Turn",
    "UnknownMessage",
    "create_store",
    "new_message_id",
]

# Relative to the working directory; the folder is created by `open()`.
DEFAULT_SQLITE_PATH = Path("data") / "ai-stream.db"

_EXPECTED = "expected postgresql://..., postgres://... or sqlite:///path/to/file.db"


def create_store(database_url: str | None) -> Store:
    """The store `database_url` (the DATABASE_URL setting) names; it is not opened yet.

    - `postgresql://...` / `postgres://...`: PostgreSQL through an asyncpg pool.
    - `sqlite:///relative/path.db` or `sqlite:////absolute/path.db`: a SQLite file.
    - None or blank: SQLite at ./data/ai-stream.db.

    Raises ValueError for anything else; the message never repeats the URL, which may
    hold a password.
    """
    # Each backend's driver is imported only when it is chosen (asyncpg alone is ~3 MB resident).
    if database_url is None or not database_url.strip():
        from .sqlite import SqliteStore

        return SqliteStore(DEFAULT_SQLITE_PATH)
    url = database_url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(f"DATABASE_URL is not a valid URL; {_EXPECTED}") from None
    scheme = parts.scheme  # urlsplit lower-cases it
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url)
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(_sqlite_path(parts.netloc, parts.path, parts.query, parts.fragment))
    if not scheme:
        raise ValueError(f"DATABASE_URL has no scheme; {_EXPECTED}")
    raise ValueError(f"DATABASE_URL has unsupported scheme {scheme!r}; {_EXPECTED}")


def _sqlite_path(netloc: str, path: str, query: str, fragment: str) -> Path:
    # sqlite:///rel/x.db -> path "/rel/x.db" -> "rel/x.db"; sqlite:////abs/x.db -> "/abs/x.db"
    if netloc or not path.startswith("/"):
        raise ValueError(
            "DATABASE_URL for SQLite must have three slashes and no host: "
            "sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    if query or fragment:
        raise ValueError("DATABASE_URL for SQLite takes no query string or fragment")
    file_path = unquote(path)[1:]
    if not file_path or file_path.endswith("/"):
        raise ValueError("DATABASE_URL for SQLite must name a file: sqlite:///path/to/file.db")
    return Path(file_path)
