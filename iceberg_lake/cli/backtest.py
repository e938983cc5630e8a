"""`lake` commands for backtests: bars and as-of joins over pinned snapshots."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import typer

from iceberg_lake.cli.common import (
    AS_OF_OPTION,
    Window,
    console,
    err_console,
    note_outside,
    open_catalog,
    option,
    option_group,
    parse_time_ns,
    split_names,
    window_options,
)
from iceberg_lake.cli.output import cell_text, output_file_errors, root_format
from iceberg_lake.cli.query import QueryOutput as TableOutput  # the same outputs as `lake query`
from iceberg_lake.cli.query import parse_as_of, write_result
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.timetravel.nanos import seconds_ns

#: The largest --lookback / --max-quote-age: ten years, no limit in practice (`inf` has no
#: nanosecond count).
MAX_SECONDS = 10 * 365 * 86_400


def register(app: typer.Typer) -> None:
    """Add `bars` and `asof` to the `lake` app."""
    app.command("bars")(bars)
    app.command("asof")(asof)


@dataclass(frozen=True)
class Result:
    """Where a backtest command's Arrow result goes (`--output`, `--out`, `--limit`)."""

    output: TableOutput
    file: Path | None
    limit: int

    @classmethod
    def from_options(
        cls, output: TableOutput | None, out: Path | None, file: Path | None, limit: int
    ) -> Result:
        """The options as given: no `--output` means the root's (`lake -o json bars …`);
        `--file` is the old spelling of `--out`."""
        if out is not None and file is not None:
            raise typer.BadParameter("give --out once", param_hint="--out")
        return cls(output or TableOutput(root_format().value), out or file, limit)

    def emit(self, result: pa.Table, what: str) -> None:
        """Print or write `result`: a table of at most `limit` rows, or as `lake query` does."""
        output, file, limit = self.output, self.file, self.limit
        if output == TableOutput.parquet and file is None:
            raise typer.BadParameter("--output parquet needs --out", param_hint="--out")
        if output != TableOutput.table or file is not None:
            with output_file_errors(file):
                write_result(result, output, file)
        else:
            from rich.table import Table as RichTable

            shown = result if not limit else result.slice(0, limit)
            table = RichTable(title=what)
            for name in shown.column_names:
                table.add_column(name, overflow="fold")
            for row in shown.to_pylist():
                table.add_row(*[cell_text(v) for v in row.values()])
            console.print(table)
        err_console.print(f"{what}: {result.num_rows} rows", highlight=False)


#: `--output`, `--out`, `--limit`, passed as `result: Result` (`lake query`'s flags).
result_options = option_group(
    "result",
    Result.from_options,
    [
        option(
            "output",
            TableOutput | None,
            None,
            "--output",
            "-o",
            text="table, csv, json or parquet (needs --out); default: the root's --output.",
        ),
        option(
            "out",
            Path | None,
            None,
            "--out",
            text="Write the result here instead of printing it.",
        ),
        option("file", Path | None, None, "--file", text="Same as --out.", hidden=True),
        option("limit", int, 50, "--limit", text="Rows shown by --output table (0: all)."),
    ],
)


@window_options()
@result_options
def bars(
    table: str = typer.Argument(..., help="Trades or quotes table, e.g. silver.stocks_trades."),
    every: str = typer.Option("1m", "--every", help="Bar width: 5s, 1m, 15m, 1h, 250ms, …"),
    by: str | None = typer.Option("symbol", "--by", help="Group column; '' for one series."),
    symbols: Annotated[
        list[str] | None,
        typer.Option(
            "--symbols",
            help="Only these symbols (comma-separated or repeated); default: every symbol.",
        ),
    ] = None,
    origin: str | None = typer.Option(
        None,
        "--origin",
        help=(
            "A time on the bar grid (Unix ns, any offset, or ISO time; 'session': the "
            "--session open). "
            "Default: the epoch, so 1d bars cut at 00:00 UTC and 7d bars start on Thursdays."
        ),
    ),
    *,
    window: Window,
    as_of: Annotated[list[str] | None, AS_OF_OPTION] = None,
    result: Result,
) -> None:
    """Time bars: OHLCV, VWAP and trade count from trades; mid/spread OHLC from quotes."""
    from iceberg_lake.timetravel.query import Lake

    start_ns, end_ns = window.ns([table])
    if origin is None:
        origin_ns = 0
    elif origin.strip() == "session":
        if window.session is None:
            raise typer.BadParameter("--origin session needs --session", param_hint="--origin")
        origin_ns = start_ns
    else:
        origin_ns = parse_time_ns(origin, "--origin", plausible=False)
    wanted = _symbols(symbols)
    with Lake(open_catalog(read_only=True)) as lake:
        series = lake.bars(
            table,
            every,
            start_ns=start_ns,
            end_ns=end_ns,
            by=by or None,
            as_of=parse_as_of(as_of),
            origin_ns=origin_ns,
            symbols=wanted,
        )
        read = dict(lake.last_pins)  # the snapshots the bars were computed from
        result.emit(series, f"{table} {every} bars")
        note_outside(lake, window.session_of([table]), read, wanted)
    if wanted and (missing := _symbols_without_rows(series, wanted)):
        # A typo (`SPX` for `SPY`) or a symbol the window lacks: say so rather than an empty
        # series the user may take for a quiet market.
        err_console.print(
            f"no rows for --symbols {', '.join(missing)} in {table} in the window",
            highlight=False,
        )


@window_options()
@result_options
def asof(
    left: str = typer.Argument(..., help="Trades table, e.g. silver.stocks_trades."),
    right: str = typer.Argument(..., help="Quotes table, e.g. silver.stocks_quotes."),
    by: str = typer.Option("symbol", "--by", help="Column both tables are matched on."),
    columns: str | None = typer.Option(
        None,
        "--columns",
        help=(
            "Quote columns, comma-separated (default: NBBO / top of book); "
            "quote_ts_event_ns is always included."
        ),
    ),
    strict: bool = typer.Option(False, "--strict", help="Only quotes strictly before a trade."),
    lookback: str = typer.Option(
        "3600",
        "--lookback",
        metavar="SECONDS",
        help="Seconds before the window's start a prevailing quote may lie (from the start, "
        "not from each trade: see --max-quote-age); exact to the nanosecond.",
    ),
    max_quote_age: str | None = typer.Option(
        None,
        "--max-quote-age",
        metavar="SECONDS",
        help="Seconds: a prevailing quote older than this before its trade counts as none "
        "(one exactly this old counts); exact to the nanosecond.",
    ),
    *,
    window: Window,
    as_of: Annotated[list[str] | None, AS_OF_OPTION] = None,
    result: Result,
) -> None:
    """Each trade with the quote prevailing at its event time (DuckDB ASOF JOIN)."""
    from iceberg_lake.timetravel.query import Lake

    lookback_ns = _seconds_ns(lookback, "--lookback")
    max_age_ns = None if max_quote_age is None else _seconds_ns(max_quote_age, "--max-quote-age")
    start_ns, end_ns = window.ns([left, right])
    quote_columns = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    with Lake(open_catalog(read_only=True)) as lake:
        joined = lake.asof_join(
            left,
            right,
            start_ns=start_ns,
            end_ns=end_ns,
            by=by,
            quote_columns=quote_columns,
            strict=strict,
            lookback_ns=lookback_ns,
            max_age_ns=max_age_ns,
            as_of=parse_as_of(as_of),
        )
        # The trades are the rows out; quotes before the open are what prevails at it.
        read = {left: lake.last_pins.get(left)}
        result.emit(joined, f"{left} as of {right}")
        note_outside(lake, window.session_of([left, right]), read)
    if (note := _unquoted_note(joined, by, right)) is not None:
        err_console.print(note, highlight=False, soft_wrap=True)


def _seconds_ns(text: str, flag: str) -> int:
    """`--lookback` / `--max-quote-age`: seconds from their decimal text, exact to the ns.

    `int(8.2 * 1e9)` was 8_199_999_999, so a quote exactly 8.2 s old counted as none (quant19).
    """
    try:
        exact = Decimal(text.strip())
    except InvalidOperation:
        raise typer.BadParameter(f"{text!r} is not a number of seconds", param_hint=flag) from None
    if not (exact.is_finite() and 0 <= exact <= MAX_SECONDS):
        raise typer.BadParameter(
            f"must be 0-{MAX_SECONDS:,} seconds, got {text.strip()}", param_hint=flag
        )
    try:
        return seconds_ns(exact)
    except TimeTravelError as exc:
        raise typer.BadParameter(str(exc), param_hint=flag) from None


#: How many `--by` values without a quote the note names before `and N more`.
_NAMED = 10


def _unquoted_note(joined: pa.Table, by: str, right: str) -> str | None:
    """One line when trades of the join found no prevailing quote at all, or some `by` values
    (symbols) found none: a wrong quotes table, or symbols spelt differently (a contract `ESH4`
    against a continuous `ES.c.0`), which otherwise shows only as null columns (quant19).
    None when every symbol has a quote for some trade."""
    if joined.num_rows == 0:
        return None
    counts = joined.group_by(by).aggregate([("quote_ts_event_ns", "count")])
    keys = counts.column(by).to_pylist()
    quoted = counts.column("quote_ts_event_ns_count").to_pylist()
    without = sorted((str(k) for k, n in zip(keys, quoted, strict=True) if n == 0))
    if not without:
        return None
    trades = joined.num_rows
    missing = joined.column("quote_ts_event_ns").null_count
    if len(without) == len(keys):
        return (
            f"no trade found a prevailing quote in {right} (all {trades:,} have null quote "
            f"columns): check the quotes table and that both name the {by} alike (a contract "
            "ESH4 against a continuous ES.c.0, a case)"
        )
    named = ", ".join(without[:_NAMED]) + (
        f" and {len(without) - _NAMED} more" if len(without) > _NAMED else ""
    )
    return (
        f"no prevailing quote in {right} for {by} {named} ({missing:,} of {trades:,} trades "
        "have null quote columns)"
    )


def _symbols_without_rows(series: pa.Table, symbols: list[str]) -> list[str]:
    """The requested symbols with no bar in `series` (all of them when it is empty; none can
    be told apart when the bars are not grouped by symbol)."""
    if series.num_rows == 0:
        return symbols
    if "symbol" not in series.column_names:
        return []
    present = set(series.column("symbol").to_pylist())
    return [s for s in symbols if s not in present]


def _symbols(values: list[str] | None) -> list[str] | None:
    """`--symbols`: None when not given; a value that names no symbol (`--symbols ''` from an
    empty list in a script) is refused rather than taken as every symbol (newuser13)."""
    if values is None:
        return None
    names = split_names(values)
    if not names:
        raise typer.BadParameter("names no symbol", param_hint="--symbols")
    return names
