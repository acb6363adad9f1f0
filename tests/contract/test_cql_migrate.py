"""`migrate-cql` (latchkit.scylla.apply_files) changes what the files declare, and only that.

CREATE ... IF NOT EXISTS alone keeps an existing keyspace or table as it was;
apply_files must also bring replication and table options in line, report
each change, and report nothing when nothing differs.
"""

from __future__ import annotations

import uuid

from latchkit import scylla as cql
from latchkit.scylla import connect
from services.access.adapters.scylla_view import CQL_DIR


def schema_row(settings, query: str, *params):
    cluster, session = connect(settings)
    try:
        return session.execute(query, params).one()
    finally:
        cluster.shutdown()


def test_a_changed_replication_factor_is_altered_then_left_alone(cql_settings):
    settings = cql_settings.with_keyspace(f"lk_test_{uuid.uuid4().hex[:8]}")
    # First run: everything is created.
    created = cql.apply_files(CQL_DIR, settings, rf=1)
    assert f"001_unlock_view.cql: created keyspace {settings.keyspace}" in created
    assert f"001_unlock_view.cql: created table {settings.keyspace}.pairs" in created
    # The file now asks for two replicas: the keyspace is altered, and the command says so.
    altered = cql.apply_files(CQL_DIR, settings, rf=2)
    assert len(altered) == 1 and f"altered keyspace {settings.keyspace}: replication" in altered[0]
    replication = schema_row(settings, "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
                             settings.keyspace).replication
    assert replication[settings.local_dc] == "2"
    # Nothing differs any more: nothing is changed.
    assert cql.apply_files(CQL_DIR, settings, rf=2) == []


def test_changed_table_options_are_altered_then_left_alone(cql_settings, tmp_path):
    settings = cql_settings.with_keyspace(f"lk_test_{uuid.uuid4().hex[:8]}")
    (tmp_path / "001_t.cql").write_text(
        "-- a table with the options migrate-cql keeps in line\n"
        "CREATE KEYSPACE IF NOT EXISTS {keyspace}\n"
        "  WITH replication = {{'class': 'NetworkTopologyStrategy', '{dc}': 1}};\n"
        "CREATE TABLE IF NOT EXISTS {keyspace}.t (k int, c int, v text, PRIMARY KEY ((k), c))\n"
        "  WITH CLUSTERING ORDER BY (c DESC)\n"
        "  AND compaction = {{'class': '{compaction}'}}\n"
        "  AND default_time_to_live = {ttl};\n")
    cql.apply_files(tmp_path, settings, ttl=100, compaction="SizeTieredCompactionStrategy")
    # Only the TTL changes in the file: only the TTL is altered.
    altered = cql.apply_files(tmp_path, settings, ttl=200, compaction="SizeTieredCompactionStrategy")
    assert altered == [f"001_t.cql: altered table {settings.keyspace}.t: default_time_to_live 100 -> 200"]
    # Then the compaction strategy.
    altered = cql.apply_files(tmp_path, settings, ttl=200, compaction="LeveledCompactionStrategy")
    assert len(altered) == 1 and "compaction" in altered[0]
    row = schema_row(settings, "SELECT default_time_to_live, compaction FROM system_schema.tables "
                     "WHERE keyspace_name = %s AND table_name = 't'", settings.keyspace)
    assert row.default_time_to_live == 200
    assert row.compaction["class"].endswith("LeveledCompactionStrategy")
    assert cql.apply_files(tmp_path, settings, ttl=200, compaction="LeveledCompactionStrategy") == []
