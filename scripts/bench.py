"""Run every benchmark in one go and print one table: each figure beside its baseline.

Each `scripts/bench_<topic>.py` exposes `run(quick: bool = False) -> list[dict]` whose rows have
`benchmark, metric, value, unit, baseline, baseline_value`, the baseline measured in the same run
(raw pyarrow Parquet write for ingest, DuckDB dedup over plain Parquet for compaction, a full
scan for replay and queries, ...). The known topics run first in a fixed order (ingest, silver,
replay, commits), then any other `bench_*.py` found here. A missing or failing benchmark is
reported as a note; the others still run. Usage::

    python scripts/bench.py [--quick] [--json FILE|-] [--only ingest,silver]

`make bench` runs it with no arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
#: Topics that run first, in this order (the issue's ingest, compaction, replay, commits).
PREFERRED = ("ingest", "silver", "replay", "commits")
COLUMNS = ("benchmark", "metric", "value", "unit", "baseline", "baseline_value")


def discover(only: list[str] | None = None, scripts: Path = SCRIPTS) -> list[str]:
    """Benchmark topics to run: the preferred ones (present or not), then the others found.

    Args:
        only: restrict to these topics.
        scripts: directory holding the `bench_*.py` files.

    Returns:
        Topic names (`ingest` for `bench_ingest.py`).
    """
    found = sorted(p.stem.removeprefix("bench_") for p in scripts.glob("bench_*.py"))
    topics = list(PREFERRED) + [t for t in found if t not in PREFERRED]
    if only:
        topics = [t for t in topics if t in only] + [t for t in only if t not in topics]
    return topics


def _load(topic: str, scripts: Path) -> ModuleType | None:
    path = scripts / f"bench_{topic}.py"
    if not path.is_file():
        return None
    if str(scripts) not in sys.path:
        sys.path.insert(0, str(scripts))  # benchmarks may import shared helpers from here
    spec = importlib.util.spec_from_file_location(f"bench_{topic}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def ratio(row: dict[str, Any]) -> float | None:
    """`value / baseline_value` when both are numbers and the baseline is not zero."""
    value, base = row.get("value"), row.get("baseline_value")
    if isinstance(value, (int, float)) and isinstance(base, (int, float)) and base:
        return float(value) / float(base)
    return None


def run(
    quick: bool = False, only: list[str] | None = None, scripts: Path = SCRIPTS
) -> dict[str, Any]:
    """Run the benchmarks.

    Args:
        quick: pass `quick=True` to every benchmark (small data, for a smoke run).
        only: run only these topics.
        scripts: directory holding the `bench_*.py` files.

    Returns:
        `{"rows": [...], "notes": [...], "topics": {topic: {"status", "seconds", "rows"}}, ...}`;
        every row gains `topic` and `ratio`.
    """
    started = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    topics: dict[str, dict[str, Any]] = {}
    for topic in discover(only, scripts):
        began = time.monotonic()
        try:
            module = _load(topic, scripts)
        except Exception as exc:
            notes.append(f"bench_{topic}.py failed to import: {type(exc).__name__}: {exc}")
            topics[topic] = {"status": "import error", "seconds": 0.0, "rows": 0}
            continue
        if module is None:
            notes.append(f"bench_{topic}.py is missing: not run")
            topics[topic] = {"status": "missing", "seconds": 0.0, "rows": 0}
            continue
        if not callable(getattr(module, "run", None)):
            notes.append(f"bench_{topic}.py has no run(quick=...): not run")
            topics[topic] = {"status": "no run()", "seconds": 0.0, "rows": 0}
            continue
        print(f"running bench_{topic}.py{' --quick' if quick else ''} ...", file=sys.stderr)
        try:
            produced = list(module.run(quick=quick))
        except Exception as exc:
            last = traceback.format_exc().strip().splitlines()[-1]
            notes.append(f"bench_{topic}.py failed: {last or exc}")
            topics[topic] = {
                "status": "failed",
                "seconds": round(time.monotonic() - began, 2),
                "rows": 0,
            }
            continue
        for row in produced:
            missing = [c for c in COLUMNS if c not in row]
            if missing:
                notes.append(f"bench_{topic}.py: a row lacks {', '.join(missing)}: {row}")
            rows.append({"topic": topic, **row, "ratio": ratio(row)})
        topics[topic] = {
            "status": "ok",
            "seconds": round(time.monotonic() - began, 2),
            "rows": len(produced),
        }
    return {
        "started_at": started.isoformat(),
        "quick": quick,
        "host": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "topics": topics,
        "rows": rows,
        "notes": notes,
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:,.2f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def print_table(result: dict[str, Any]) -> None:
    """Print the results as one rich table, then the per-topic timings and the notes."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or in CI: do not squeeze the table into 80 columns
        console = Console(width=160)
    title = "iceberg_lake benchmarks" + (" (quick)" if result["quick"] else "")
    table = Table(title=title)
    table.add_column("benchmark")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("baseline")
    table.add_column("baseline value", justify="right")
    table.add_column("× baseline", justify="right")
    for row in result["rows"]:
        r = row.get("ratio")
        table.add_row(
            str(row.get("benchmark", row["topic"])),
            str(row.get("metric", "")),
            _fmt(row.get("value")),
            str(row.get("unit", "")),
            str(row.get("baseline", "")),
            _fmt(row.get("baseline_value")),
            "" if r is None else f"{r:.2f}",
        )
    console.print(table)
    timings = ", ".join(
        f"{t}: {info['status']}"
        + (f" {info['seconds']:.1f} s" if info["status"] in ("ok", "failed") else "")
        for t, info in result["topics"].items()
    )
    console.print(f"[dim]{timings}[/dim]")
    for note in result["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)


def main() -> None:
    """Command-line entry: run, print the table, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data: a smoke run")
    parser.add_argument(
        "--json", metavar="FILE", help="also write the results as JSON (- = stdout)"
    )
    parser.add_argument("--only", help="comma-separated topics (ingest,silver,replay,commits,...)")
    args = parser.parse_args()
    only = [t.strip() for t in args.only.split(",") if t.strip()] if args.only else None
    result = run(quick=args.quick, only=only)
    if args.json == "-":
        print(json.dumps(result, indent=2, default=str))
    else:
        print_table(result)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
            print(f"wrote {args.json}", file=sys.stderr)
    failed = [
        t for t, info in result["topics"].items() if info["status"] in ("failed", "import error")
    ]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
