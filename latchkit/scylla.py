"""ScyllaDB (CQL) connection settings and the asyncio bridge shared by the CQL adapters.

Nothing connects at import time; `connect` is called by an adapter's `open`.
Development and tests run these adapters against Apache Cassandra 5.0 (the
same CQL and native protocol as ScyllaDB, through the same driver); see
docs/cql.md for what that does and does not prove.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from latchkit.settings import SettingsError, env_int, env_list, env_str

PROTOCOL_VERSION = 4
"""ScyllaDB speaks native protocol v4; pinning it keeps Cassandra 5 (which would offer v5) honest."""


@dataclass(frozen=True)
class ScyllaSettings:
    hosts: tuple[str, ...]
    """LATCHKEY_SCYLLA_HOSTS: comma-separated contact points (addresses, no ports); empty means no CQL store."""
    keyspace: str = "latchkey"
    """LATCHKEY_SCYLLA_KEYSPACE (default latchkey)."""
    local_dc: str = "datacenter1"
    """LATCHKEY_SCYLLA_LOCAL_DC: the data centre whose replicas LOCAL_QUORUM counts."""
    port: int = 9042
    """LATCHKEY_SCYLLA_PORT: the native transport port of every contact point (default 9042)."""
    username: str = ""
    """LATCHKEY_SCYLLA_USERNAME: with LATCHKEY_SCYLLA_PASSWORD, password authentication; empty: none."""
    password: str = ""
    """LATCHKEY_SCYLLA_PASSWORD."""
    tls_ca_file: Path | None = None
    """LATCHKEY_SCYLLA_TLS_CA: a CA file turns on TLS to the cluster (the server's certificate is verified)."""
    tls_cert_file: Path | None = None
    """LATCHKEY_SCYLLA_TLS_CERT / _KEY: a client certificate, for clusters that require one."""
    tls_key_file: Path | None = None
    tls_server_name: str = ""
    """LATCHKEY_SCYLLA_TLS_SERVER_NAME: the name the cluster's certificate must carry. The driver
    otherwise checks it against each node's IP address, which a certificate for a cluster whose
    nodes come and go cannot list. Empty: each node's address."""
    request_timeout: float = 2.0
    """LATCHKEY_SCYLLA_REQUEST_TIMEOUT_SECONDS: one request's client-side timeout (default 2)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ScyllaSettings:
        """From os.environ, or from `environ` (a migration gets the environment it should use)."""
        if environ is not None:
            with _environ(environ):
                return cls.from_env()

        def path(name: str) -> Path | None:
            raw = env_str(name, "")
            return Path(raw) if raw else None

        settings = cls(
            hosts=env_list("LATCHKEY_SCYLLA_HOSTS"),
            keyspace=env_str("LATCHKEY_SCYLLA_KEYSPACE", "latchkey"),
            local_dc=env_str("LATCHKEY_SCYLLA_LOCAL_DC", "datacenter1"),
            port=env_int("LATCHKEY_SCYLLA_PORT", 9042, minimum=1),
            username=env_str("LATCHKEY_SCYLLA_USERNAME", ""),
            password=env_str("LATCHKEY_SCYLLA_PASSWORD", ""),
            tls_ca_file=path("LATCHKEY_SCYLLA_TLS_CA"),
            tls_cert_file=path("LATCHKEY_SCYLLA_TLS_CERT"),
            tls_key_file=path("LATCHKEY_SCYLLA_TLS_KEY"),
            tls_server_name=env_str("LATCHKEY_SCYLLA_TLS_SERVER_NAME", ""),
            request_timeout=float(env_str("LATCHKEY_SCYLLA_REQUEST_TIMEOUT_SECONDS", "2")),
        )
        if bool(settings.username) != bool(settings.password):
            raise SettingsError("LATCHKEY_SCYLLA_USERNAME and LATCHKEY_SCYLLA_PASSWORD go together")
        if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
            raise SettingsError("LATCHKEY_SCYLLA_TLS_CERT and LATCHKEY_SCYLLA_TLS_KEY go together")
        if settings.tls_cert_file and not settings.tls_ca_file:
            raise SettingsError("LATCHKEY_SCYLLA_TLS_CERT needs LATCHKEY_SCYLLA_TLS_CA")
        return settings

    def with_keyspace(self, keyspace: str) -> ScyllaSettings:
        from dataclasses import replace

        return replace(self, keyspace=keyspace)


@contextlib.contextmanager
def _environ(values: Mapping[str, str]):
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def migration_replication_factor(environ: Mapping[str, str]) -> int | None:
    """LATCHKEY_SCYLLA_REPLICATION_FACTOR: set, `latchkey migrate` applies the CQL schemas with it.

    Unset (production), `latchkey migrate` leaves the CQL keyspaces to `latchkey
    access|audit migrate-cql --rf N`, so a migration job never changes replication by accident.
    The local stack sets it to 1 when it runs its CQL engine.
    """
    raw = environ.get("LATCHKEY_SCYLLA_REPLICATION_FACTOR", "")
    if not raw:
        return None
    try:
        rf = int(raw)
    except ValueError as exc:
        raise SettingsError(f"LATCHKEY_SCYLLA_REPLICATION_FACTOR={raw!r} is not an integer") from exc
    if rf < 1:
        raise SettingsError(f"LATCHKEY_SCYLLA_REPLICATION_FACTOR={rf} is below 1")
    return rf


def _ssl_context(settings: ScyllaSettings):
    if settings.tls_ca_file is None:
        return None
    import ssl

    context = ssl.create_default_context(cafile=str(settings.tls_ca_file))
    if settings.tls_cert_file is not None:
        context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    return context


def connect(settings: ScyllaSettings):
    """A driver Session whose default consistency is LOCAL_QUORUM (the driver's default is LOCAL_ONE)."""
    from cassandra import ConsistencyLevel
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.local_dc)),
        consistency_level=ConsistencyLevel.LOCAL_QUORUM, request_timeout=settings.request_timeout,
    )
    auth = PlainTextAuthProvider(settings.username, settings.password) if settings.username else None
    ssl_options = {"server_hostname": settings.tls_server_name} if settings.tls_server_name else None
    cluster = Cluster(list(settings.hosts), port=settings.port, protocol_version=PROTOCOL_VERSION,
                      auth_provider=auth, ssl_context=_ssl_context(settings), ssl_options=ssl_options,
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    return cluster, cluster.connect()


async def pages(session, statement, params=None, fetch_size: int | None = None):
    """Yield each page of rows; the next page is fetched asynchronously, never by iterating a ResultSet.

    `fetch_size` (a prepared statement's rows per page; the driver's default is 5,000)
    keeps a read that wants a few rows from fetching and decoding thousands.

    The driver calls the callbacks on its own threads, once per page, so they
    only hand the page to the event loop (`call_soon_threadsafe`). A write (a
    VOID result) hands the callback `None`, not an empty list: it yields `[]`.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    if fetch_size is not None and hasattr(statement, "bind"):
        statement, params = statement.bind(params), None
        statement.fetch_size = fetch_size
    response = session.execute_async(statement, params)
    response.add_callbacks(lambda rows: loop.call_soon_threadsafe(queue.put_nowait, (rows, None)),
                           lambda exc: loop.call_soon_threadsafe(queue.put_nowait, (None, exc)))
    while True:
        rows, exc = await queue.get()
        if exc is not None:
            raise exc
        yield list(rows) if rows is not None else []
        if not response.has_more_pages:
            return
        response.start_fetching_next_page()


async def execute(session, statement, params=None) -> list:
    """All rows of a statement (for small results: a partition key lookup, a write)."""
    result = []
    async for page in pages(session, statement, params):
        result.extend(page)
    return result


# ---- schema files: `<service>/cql/NNN_*.cql` applied in order, idempotently --------------------
# Applying versioned CQL files (`<service>/cql/NNN_*.cql`) to a Scylla cluster, in order, idempotently.
#
# `CREATE ... IF NOT EXISTS` alone silently keeps an existing keyspace or table
# as it was, so a changed replication factor or TTL in a file would never reach
# the cluster. After each CREATE of a keyspace or table that already existed,
# the options the file declares are compared with `system_schema` and an
# `ALTER` is issued only for those that differ. The files stay the one
# declaration of the schema; running them again changes nothing.

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
