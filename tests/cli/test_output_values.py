"""What the output layer does with values: data is never Rich markup, JSON is typed, a bare group
prints its help.

Budget: ~8 s (SQLite lakes, no servers; DuckDB starts once per query).
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections import namedtuple
from decimal import Decimal
from enum import IntEnum
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.core import TyperGroup
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.cli.output import OutputFormat, cell_text, to_json
from iceberg_lake.ingest.dead_letters import DeadLetter, dead_letter_table

runner = CliRunner()

#: Values Rich would read as markup or emoji codes: `[/x]` is a closing tag with no opening one
#: (MarkupError), `[bold]` a style, `[identity(symbol)]` an unknown tag (shown as nothing).
MARKUP = ("[/x]", "[bold]x[/bold]", "[identity(symbol)]", ":smile:")


class Flag(IntEnum):
    on = 1


def _env(catalog: LakeCatalog) -> dict[str, str]:
    # Wide, so rich folds no cell and every value is on one line of the output.
    return {"LAKE_DATA_DIR": str(catalog.settings.data_dir), "COLUMNS": "250"}


@pytest.fixture(scope="module")
def env(module_lake: LakeCatalog) -> dict[str, str]:
    return _env(module_lake)


def test_query_values_that_look_like_markup_print_as_they_are(env: dict[str, str]) -> None:
    select = ", ".join(f"'{v}' AS c{i}" for i, v in enumerate(MARKUP))
    res = runner.invoke(app, ["query", f"SELECT {select}"], env=env)
    assert res.exit_code == 0, res.output
    for value in MARKUP:
        assert value in res.stdout, (value, res.stdout)
    # A column named like markup, and csv, say the same.
    named = runner.invoke(app, ["query", 'SELECT 1 AS "[/x]"'], env=env)
    assert named.exit_code == 0 and "[/x]" in named.stdout, named.output
    as_csv = runner.invoke(app, ["query", f"SELECT {select}", "-o", "csv"], env=env)
    assert next(csv.reader(io.StringIO(as_csv.stdout.splitlines()[1]))) == list(MARKUP)


def test_an_error_built_from_data_prints_it_as_it_is(env: dict[str, str]) -> None:
    for args in (["describe", "bronze.[/x]"], ["query", 'SELECT * FROM "[bold]t[/bold]"']):
        res = runner.invoke(app, args, env=env)
        assert res.exit_code == 1
        assert res.stderr.startswith("error: "), res.stderr
        assert "[/x]" in res.stderr or "[bold]t[/bold]" in res.stderr, res.stderr


def test_dead_letters_whose_bytes_look_like_markup_list(lake: LakeCatalog) -> None:
    quarantine = lake.load_table("bronze.dead_letters")
    letters = [
        DeadLetter(1_765_900_000 * 10**9, "bronze.stocks_trades", "market.stocks.trades",
                   "MARKET", 7, "missing field [bold]symbol[/bold]", b'{"note": "[/x] bad"}'),
        DeadLetter(1_765_900_001 * 10**9, "unrouted", "market.x.[y]", "MARKET", 8,
                   "no route :smile:", b"\xff[/x]"),
    ]  # fmt: skip
    quarantine.append(dead_letter_table(letters, quarantine.schema().as_arrow()))
    env = _env(lake)

    res = runner.invoke(app, ["dead-letters", "list"], env=env)
    assert res.exit_code == 0, res.output
    for shown in ('"[/x] bad"', "[bold]symbol[/bold]", "market.x.[y]", ":smile:", "\\xff[/x]"):
        assert shown in res.stdout, (shown, res.stdout)

    # -o json: the same text, as strings; a bad byte is escaped as the table shows it.
    rows = json.loads(runner.invoke(app, ["dead-letters", "list", "-o", "json"], env=env).stdout)
    assert [r["raw"] for r in rows] == ['{"note": "[/x] bad"}', "\\xff[/x]"]
    assert [r["stream_seq"] for r in rows] == [7, 8]

    # The raw column read by SQL is bytes: its UTF-8 text, else base64.
    sql = "SELECT stream_seq, raw FROM bronze.dead_letters ORDER BY stream_seq"
    raw = json.loads(runner.invoke(app, ["query", sql, "-o", "json"], env=env).stdout)
    assert raw == [
        {"stream_seq": 7, "raw": '{"note": "[/x] bad"}'},
        {"stream_seq": 8, "raw": base64.b64encode(b"\xff[/x]").decode()},
    ]


def test_migrate_check_shows_the_partition_specs(lake: LakeCatalog) -> None:
    with lake.load_table("bronze.stocks_quotes").update_spec() as spec:
        spec.add_identity("source")
    res = runner.invoke(app, ["migrate", "check"], env=_env(lake))
    assert res.exit_code == 1
    assert "live [identity(symbol), hour(ts_event), identity(source)]" in res.stdout, res.stdout
    assert "declared [identity(symbol), hour(ts_event)]" in res.stdout


def test_query_json_is_typed(env: dict[str, str]) -> None:
    sql = (
        "SELECT sum(x) AS total, 1.50 AS price, 123456789012345678.123456::DECIMAL(38, 6) AS big,"
        " 'ab'::BLOB AS text_bytes, '\\xFF\\x00'::BLOB AS binary, 'nan'::DOUBLE AS nan,"
        " TIMESTAMPTZ '2025-12-16 14:30:00+00' AS ts, DATE '2025-12-16' AS day,"
        " [1.5::DECIMAL(4, 1)] AS list, 2.5::DOUBLE AS f FROM range(3) r(x)"
    )
    res = runner.invoke(app, ["query", sql, "-o", "json"], env=env)
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout, parse_float=Decimal)
    assert row == {
        "total": 3,  # DuckDB's sum of integers is a DECIMAL(38, 0): a JSON integer
        "price": Decimal("1.50"),  # every digit, as a number
        "big": Decimal("123456789012345678.123456"),  # not rounded to a double
        "text_bytes": "ab",
        "binary": base64.b64encode(b"\xff\x00").decode(),
        "nan": None,
        "ts": "2025-12-16T14:30:00+00:00",
        "day": "2025-12-16",
        "list": [Decimal("1.5")],
        "f": Decimal("2.5"),
    }
    assert isinstance(json.loads(res.stdout)[0]["total"], int)

    # --out with the table format writes NDJSON by the same rules.
    out = Path(env["LAKE_DATA_DIR"]).parent / "rows.ndjson"
    written = runner.invoke(app, ["query", sql, "--out", str(out)], env=env)
    assert written.exit_code == 0, written.output
    assert json.loads(out.read_text(), parse_float=Decimal) == row

    # csv: bytes and lists as text by the same rules (Arrow's writer refuses them).
    as_csv = runner.invoke(app, ["query", sql, "-o", "csv"], env=env)
    assert as_csv.exit_code == 0, as_csv.output
    (line,) = csv.DictReader(io.StringIO(as_csv.stdout))
    assert (line["total"], line["price"], line["binary"]) == ("3", "1.50", row["binary"])
    assert (line["text_bytes"], line["list"]) == ("ab", "[1.5]")


def test_json_layout_is_json_dumps() -> None:
    plain = [{"a": 1, "b": [2.5, None, True, {}], "c": {"d": "é\n"}, "e": []}, {}]
    assert to_json(plain) == json.dumps(plain, indent=2)
    assert to_json(plain, indent=None) == json.dumps(plain)
    assert to_json([Decimal("1E+3"), Decimal("-0.00"), Decimal("1E-20"), Decimal("NaN")]) == (
        "[\n  1000,\n  0,\n  1E-20,\n  null\n]"
    )
    # Subclasses of str and int (the CLI's enums) and Arrow's intervals (named tuples).
    interval = namedtuple("MonthDayNano", "months days nanoseconds")(0, 1, 5)
    assert to_json([OutputFormat.json, Flag.on, interval], indent=None) == (
        '["json", 1, {"months": 0, "days": 1, "nanoseconds": 5}]'
    )
    assert (cell_text(Decimal("1E+3")), cell_text(b"\xff"), cell_text([b"a"])) == (
        "1000",
        "/w==",
        '["a"]',
    )


def _groups() -> list[list[str]]:
    """`[]` (the root) and every group's path, e.g. `["maintain"]` (new groups included)."""
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    return [[]] + [[n] for n, c in root.commands.items() if isinstance(c, TyperGroup)]


@pytest.mark.parametrize("args", _groups(), ids=lambda a: " ".join(["lake", *a]))
def test_a_bare_group_prints_its_help_and_exits_0(tmp_path: Path, args: list[str]) -> None:
    res = runner.invoke(app, args, env={"LAKE_DATA_DIR": str(tmp_path / "data")})
    assert res.exit_code == 0, res.output
    assert f"Usage: {' '.join(['lake', *args])} " in res.stdout and "Commands" in res.stdout
    assert res.stderr == ""
    assert not (tmp_path / "data").exists()


def test_an_unknown_command_is_still_one_line_and_exit_1(tmp_path: Path) -> None:
    for args in (["bogus"], ["maintain", "bogus"], ["maintain", "--bogus"]):
        res = runner.invoke(app, args, env={"LAKE_DATA_DIR": str(tmp_path / "data")})
        assert res.exit_code == 1, (args, res.output)
        assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1, res.output


def _commands() -> dict[str, Any]:
    """Every leaf command by its path (`"maintain expire-snapshots"`)."""
    out: dict[str, Any] = {}

    def walk(cmd: Any, path: list[str]) -> None:
        if isinstance(cmd, TyperGroup):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            out[" ".join(path)] = cmd

    walk(typer.main.get_command(app), [])
    return out


def test_help_paragraphs_wrap_to_the_terminal_not_to_the_source() -> None:
    """Typer keeps a docstring's line breaks after its first paragraph: text wrapped at 100
    columns in the source would break mid-sentence at 80. Every help line fits and no
    paragraph line ends short with the next one starting in lower case mid-sentence."""
    for name in _commands():
        res = runner.invoke(app, [*name.split(), "--help"], env={"COLUMNS": "80"})
        assert res.exit_code == 0, (name, res.output)
        text = res.stdout.split("╭")[0]  # the prose, before the option boxes
        lines = [line.rstrip() for line in text.splitlines()]
        for line, after in zip(lines, lines[1:], strict=False):
            ragged = 0 < len(line) < 50 and after.strip()[:1].islower()
            assert not ragged, (name, line, after)


def test_every_command_that_prints_a_result_takes_output() -> None:
    # `serve` runs until stopped; `replay` writes events (`--format`), not a result.
    lacking = {n for n, c in _commands().items() if "output" not in {p.name for p in c.params}}
    assert lacking == {"serve", "replay"}


def test_table_create_migrate_new_and_untag_print_json(tmp_path: Path, lake: LakeCatalog) -> None:
    env = _env(lake)
    created = runner.invoke(app, ["-o", "json", "table", "create", "silver.stocks_trades"], env=env)
    assert created.exit_code == 0, created.output
    (row,) = json.loads(created.stdout)
    assert (row["table"], row["created"], row["schema_name"]) == (
        "silver.stocks_trades",
        False,
        "stocks.trades",
    )
    folder = tmp_path / "migrations"
    folder.mkdir()
    new = runner.invoke(app, ["migrate", "new", "x", "--dir", str(folder), "-o", "json"], env=env)
    assert new.exit_code == 0, new.output
    assert Path(json.loads(new.stdout)[0]["path"]) == folder / "0001_x.py"
    tagged = runner.invoke(
        app, ["-o", "csv", "snapshot", "tag", "t1", "--tables", "bronze.stocks_trades"], env=env
    )
    assert tagged.stdout.startswith("table,snapshot_id,tag\n"), tagged.output
    untag = ["-o", "json", "snapshot", "untag", "t1"]
    removed = runner.invoke(app, untag, env=env)
    assert removed.exit_code == 0, removed.output
    assert json.loads(removed.stdout) == [{"table": "bronze.stocks_trades", "tag": "t1"}]
