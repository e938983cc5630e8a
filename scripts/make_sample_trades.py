"""Make a small Polygon/Massive-style trades flat file (`.csv.gz`) to try `lake load` on.

The file has the columns and value formats of Polygon's `us_stocks_sip/trades_v1` day files
(Unix-nanosecond timestamps, comma-separated condition codes) for a few symbols over one session,
and five deliberately bad rows (a price that is not a number, a negative price, a missing size,
an empty ticker, a millisecond timestamp) that `lake load` dead-letters while it stores their
neighbours. Standard library only; the same arguments always give the same bytes (a re-run
writes the same file, which `lake load` then recognises as already loaded).

Usage (the worked example of docs/backfill.md)::

    python scripts/make_sample_trades.py us_stocks_sip/trades_v1/2025/12/2025-12-16.csv.gz
    python scripts/make_sample_trades.py FILE --rows 100000 --date 2025-12-17
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import io
import random
from pathlib import Path

COLUMNS = [
    "ticker",
    "conditions",
    "correction",
    "exchange",
    "id",
    "participant_timestamp",
    "price",
    "sequence_number",
    "sip_timestamp",
    "size",
    "tape",
    "trf_id",
    "trf_timestamp",
]
SYMBOLS = {"AAPL": 195.0, "MSFT": 430.0, "NVDA": 135.0, "SPY": 600.0, "TSLA": 350.0}
#: Row index → (column, bad value): one of each kind of row the loader dead-letters.
BAD_ROWS = {
    10: ("price", "abc"),
    11: ("price", "-1.5"),
    12: ("size", ""),
    13: ("ticker", ""),
    14: ("sip_timestamp", "1765895400000"),
}


def make_rows(rows: int, day: dt.date, seed: int = 16) -> list[list[str]]:
    """`rows` trades between 14:30 and 21:00 UTC of `day`, in SIP-time order."""
    rng = random.Random(seed)
    open_ns = int(dt.datetime(day.year, day.month, day.day, 14, 30, tzinfo=dt.UTC).timestamp())
    open_ns *= 10**9
    step = int(6.5 * 3600 * 10**9) // max(1, rows)
    prices = dict(SYMBOLS)
    out = []
    for i in range(rows):
        symbol = rng.choice(list(SYMBOLS))
        prices[symbol] = max(1.0, prices[symbol] * (1 + rng.gauss(0, 0.0002)))
        sip = open_ns + i * step + rng.randrange(step or 1)
        row = {
            "ticker": symbol,
            "conditions": "12,37" if rng.random() < 0.2 else "",
            "correction": "",
            "exchange": str(rng.choice((4, 8, 10, 11, 12, 15, 19))),
            "id": str(i + 1),
            "participant_timestamp": str(sip - rng.randrange(1_000, 500_000)),
            "price": f"{prices[symbol]:.2f}",
            "sequence_number": str(i + 1),
            "sip_timestamp": str(sip),
            "size": str(rng.choice((1, 5, 10, 50, 100, 100, 100, 200, 500))),
            "tape": "2" if symbol == "SPY" else "3",  # SPY: NYSE Arca (tape B)
            "trf_id": "",
            "trf_timestamp": "",
        }
        if i in BAD_ROWS:
            column, value = BAD_ROWS[i]
            row[column] = value
        out.append([row[c] for c in COLUMNS])
    return out


def write(path: Path, rows: int, day: dt.date) -> Path:
    """Write the file (parent folders included); returns its path."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(make_rows(rows, day))
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the gzip header carries no timestamp, so the same arguments give the same bytes.
    path.write_bytes(gzip.compress(buf.getvalue().encode(), compresslevel=6, mtime=0))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="the .csv.gz to write")
    parser.add_argument("--rows", type=int, default=20_000, help="trades (default 20,000)")
    parser.add_argument(
        "--date", type=dt.date.fromisoformat, default=None, help="UTC day, YYYY-MM-DD"
    )
    opts = parser.parse_args()
    day = opts.date or _date_from_name(opts.path) or dt.date(2025, 12, 16)
    path = write(opts.path, opts.rows, day)
    print(f"wrote {path} ({opts.rows:,} trades of {day}, {len(BAD_ROWS)} of them bad)")


def _date_from_name(path: Path) -> dt.date | None:
    """The day of a Polygon day file named `YYYY-MM-DD.csv.gz`, if it is named so."""
    try:
        return dt.date.fromisoformat(path.name.split(".")[0])
    except ValueError:
        return None


if __name__ == "__main__":
    main()
