"""Guard tests for `iceberg_lake.engine.duck.referenced_tables` and `drop_views`.

They fail loudly when a DuckDB upgrade changes what `Lake.query` relies on to find the tables a
statement names: `json_serialize_sql` output (BASE_TABLE nodes with `catalog_name`,
`schema_name`, `table_name`; an `error` flag for statements it cannot serialize), `tokenize`
(byte offsets, literals as their own tokens, comments skipped) and case-insensitive lookup of
quoted names. Budget: about 1 s.
"""

from __future__ import annotations

import json

import duckdb
import pytest

from iceberg_lake.engine import duck

SCHEMAS = ("bronze", "silver", "gold")


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    yield c
    c.close()


def test_guard_json_serialize_sql_shape(con: duckdb.DuckDBPyConnection) -> None:
    raw = con.execute(
        "SELECT json_serialize_sql(?)", ['SELECT * FROM "memory"."Bronze".t']
    ).fetchone()
    tree = json.loads(raw[0])
    assert tree["error"] is False
    ref = tree["statements"][0]["node"]["from_table"]
    assert ref["type"] == "BASE_TABLE"
    assert (ref["catalog_name"], ref["schema_name"], ref["table_name"]) == ("memory", "Bronze", "t")
    explain = json.loads(con.execute("SELECT json_serialize_sql('EXPLAIN SELECT 1')").fetchone()[0])
    assert explain["error"] is True


def test_guard_tokenizer_offsets_literals_and_comments() -> None:
    sql = "SELECT 'é.x', \"b\".c -- gold.d"
    tokens = duckdb.tokenize(sql)
    kinds = [k for _, k in tokens]
    assert duckdb.token_type.comment not in kinds  # comments are skipped
    assert kinds[1] == duckdb.token_type.string_const
    ident = [p for p, k in tokens if k == duckdb.token_type.identifier][0]
    assert sql.encode()[ident : ident + 3] == b'"b"'  # byte offset (after a 2-byte 'é')


@pytest.mark.parametrize(
    ("sql", "names", "exact"),
    [
        ('SELECT * FROM "bronze"."stocks_quotes"', {"bronze.stocks_quotes"}, True),
        (
            'SELECT * FROM "bronze".a, bronze."B", BRONZE.C',
            {"bronze.a", "bronze.b", "bronze.c"},
            True,
        ),
        ("SELECT * FROM silver . x JOIN memory.gold.y USING (k)", {"silver.x", "gold.y"}, True),
        ("SELECT * FROM other.gold.y, main.t, t", set(), True),  # another database, not ours
        ("SELECT 'bronze.x' AS s -- gold.y", set(), True),
        ("WITH gold AS (SELECT 1 AS c) SELECT gold.c FROM gold", set(), True),
        (
            "SELECT (SELECT 1 FROM gold.a WHERE x IN (SELECT x FROM silver.b))",
            {"gold.a", "silver.b"},
            True,
        ),
        ('DESCRIBE "silver"."q"', {"silver.q"}, True),
        # Not serializable by the parser: the tokenizer's superset.
        (
            'EXPLAIN SELECT * FROM "bronze" . "St""x" /* gold.a */, $$silver.b$$',
            {'bronze.st"x'},
            False,
        ),
        ("SELECT 1; EXPLAIN SELECT * FROM memory.GOLD.c, other.silver.d", {"gold.c"}, False),
        ("PIVOT bronze.a ON x USING sum(y)", {"bronze.a"}, False),
    ],
)
def test_referenced_tables(
    con: duckdb.DuckDBPyConnection, sql: str, names: set[str], exact: bool
) -> None:
    assert duck.referenced_tables(con, sql, SCHEMAS) == duck.TableRefs(frozenset(names), exact)


def test_referenced_tables_raises_on_invalid_sql(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(duckdb.ParserException):
        duck.referenced_tables(con, "SELECT * FROM", SCHEMAS)


def test_quoted_upper_case_names_resolve_to_the_lower_case_view_and_drop_views(
    con: duckdb.DuckDBPyConnection,
) -> None:
    con.execute("CREATE SCHEMA bronze; CREATE SCHEMA other")
    con.execute('CREATE VIEW bronze."t" AS SELECT 1 AS a')
    con.execute("CREATE VIEW other.keep AS SELECT 2 AS a")
    assert con.execute('SELECT a FROM "BRONZE"."T"').fetchone() == (1,)
    duck.drop_views(con, SCHEMAS)
    views = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    assert views == [("keep",)]
