"""Small durable SQLite files of one access instance (decision spool, Redis backlog)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_durable(path: Path, *schema: str) -> sqlite3.Connection:
    """WAL and synchronous=FULL: a committed write survives a crash or a power loss."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    for statement in schema:
        conn.execute(statement)
    return conn


def write_all(conn: sqlite3.Connection, *statements: tuple[str, list]) -> None:
    """Each (sql, rows) in one transaction: all or nothing; the connection stays usable for a retry."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, rows in statements:
            conn.executemany(sql, rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
