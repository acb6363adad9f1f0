"""Applying versioned CQL files (`<service>/cql/NNN_*.cql`) to a Scylla cluster, in order, idempotently.

`CREATE ... IF NOT EXISTS` alone silently keeps an existing keyspace or table
as it was, so a changed replication factor or TTL in a file would never reach
the cluster. After each CREATE of a keyspace or table that already existed,
the options the file declares are compared with `system_schema` and an
`ALTER` is issued only for those that differ. The files stay the one
declaration of the schema; running them again changes nothing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from latchkit.scylla import ScyllaSettings, connect

TABLE_OPTIONS = ("default_time_to_live", "gc_grace_seconds", "compaction")
"""Table options compared and altered; others (clustering order, ...) are set at creation only."""

_KEYSPACE = re.compile(r"CREATE\s+KEYSPACE\s+IF\s+NOT\s+EXISTS\s+(\w+)\s+WITH\s+(.*)", re.I | re.S)
_AND = re.compile(r"\s+AND\s+", re.I)
_TABLE = re.compile(r"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+(\w+)\.(\w+)\s*\(", re.I)


def statements(path: Path, **values) -> list[str]:
    text = "\n".join(line for line in path.read_text().splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in text.format(**values).split(";") if s.strip()]


def _options(text: str) -> dict[str, str]:
    """`a = 1 AND b = {...}` -> {"a": "1", "b": "{...}"}: each value's raw CQL, split outside braces and quotes."""
    parts, depth, quoted, start, i = [], 0, False, 0, 0
    while i < len(text):
        if text[i] == "'":
            quoted = not quoted
        elif not quoted and text[i] in "{}":
            depth += 1 if text[i] == "{" else -1
        elif not quoted and depth == 0 and (match := _AND.match(text, i)):
            parts.append(text[start:i])
            start = i = match.end()
            continue
        i += 1
    parts.append(text[start:])
    options = {}
    for part in parts:
        name, _, value = part.partition("=")
        options[name.strip().lower()] = value.strip()
    return options


def _table_options(statement: str, match: re.Match) -> dict[str, str]:
    depth = 0
    for i in range(match.end() - 1, len(statement)):
        depth += (statement[i] == "(") - (statement[i] == ")")
        if depth == 0:
            rest = statement[i + 1:].strip()
            return _options(rest[4:]) if rest[:4].upper() == "WITH" else {}
    raise ValueError(f"unbalanced parentheses in: {statement[:80]}")


def _same(declared: str, stored, *, every_key: bool = False) -> bool:
    """A declared CQL value against system_schema's: numbers as numbers, a class by its short name, a map by
    each declared key (system_schema adds defaults) or, with `every_key`, by exactly the same keys."""
    value = ast.literal_eval(declared)
    if not isinstance(value, dict):
        return int(value) == stored
    stored = stored or {}
    if every_key and set(map(str, value)) != set(stored):
        return False

    def text(key, v) -> str:
        v = str(v).lower() if isinstance(v, bool) else str(v)
        return v.rsplit(".", 1)[-1] if key == "class" else v

    return all(text(k, v) == text(k, stored.get(k)) for k, v in value.items())


def _apply(session, statement: str) -> list[str]:
    if match := _KEYSPACE.match(statement):
        keyspace = match[1].lower()
        row = session.execute("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
                              (keyspace,)).one()
        if row is None:
            session.execute(statement, timeout=60)
            return [f"created keyspace {keyspace}"]
        declared = _options(match[2]).get("replication")
        # Every key: a data centre dropped from the file is a change too.
        if declared is None or _same(declared, row.replication, every_key=True):
            return []
        session.execute(f"ALTER KEYSPACE {keyspace} WITH replication = {declared}", timeout=60)
        return [f"altered keyspace {keyspace}: replication {dict(row.replication)} -> {declared}"
                " (run a repair so the new replicas get the existing data)"]
    if match := _TABLE.match(statement):
        keyspace, table = match[1].lower(), match[2].lower()
        row = session.execute(f"SELECT {', '.join(TABLE_OPTIONS)} FROM system_schema.tables "
                              "WHERE keyspace_name = %s AND table_name = %s", (keyspace, table)).one()
        if row is None:
            session.execute(statement, timeout=60)
            return [f"created table {keyspace}.{table}"]
        changed = {name: value for name, value in _table_options(statement, match).items()
                   if name in TABLE_OPTIONS and not _same(value, getattr(row, name))}
        if not changed:
            return []
        session.execute(f"ALTER TABLE {keyspace}.{table} WITH "
                        + " AND ".join(f"{name} = {value}" for name, value in changed.items()), timeout=60)
        return [f"altered table {keyspace}.{table}: {name} {getattr(row, name)} -> {value}"
                for name, value in changed.items()]
    session.execute(statement, timeout=60)
    return []


def apply_files(directory: Path, settings: ScyllaSettings, **values) -> list[str]:
    """Apply every file in order; return one human-readable line per change (empty: nothing changed).

    `{keyspace}` and `{dc}` come from `settings`; `values` fill the files' other placeholders.
    """
    cluster, session = connect(settings)
    changes: list[str] = []
    try:
        for path in sorted(directory.glob("*.cql")):
            for statement in statements(path, keyspace=settings.keyspace, dc=settings.local_dc, **values):
                changes += [f"{path.name}: {line}" for line in _apply(session, statement)]
    finally:
        cluster.shutdown()
    return changes
