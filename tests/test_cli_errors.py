"""Bad input and bad configuration end in one line without secrets, never a traceback.

Also the query sandbox. Budget: about 25 s (`lake` subprocesses, one short `lake serve`), plus
about 12 s for the one-line tests from `filled_lake` on (corrupt metadata, URLs, usage, output
files, the last-resort handler).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import typer
from table_rows import make_rows
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog, catalog_errors
from iceberg_lake.cli.app import app
from iceberg_lake.cli.common import parse_window
from iceberg_lake.config import load_settings, redact, redact_url
from iceberg_lake.exceptions import ConfigError, CorruptMetadataError, LakeError
from iceberg_lake.timetravel.query import Lake

SECRET = "s3cr3t-Pa55"
runner = CliRunner()


def _one_line_error(result_stderr: str, exit_code: int | None) -> str:
    assert exit_code not in (0, None), result_stderr
    assert "Traceback" not in result_stderr
    lines = [line for line in result_stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result_stderr
    return lines[0]


def _lake(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """The installed `lake` executable (this worktree's package wins through PYTHONPATH)."""
    exe = shutil.which("lake", path=os.path.dirname(sys.executable)) or "lake"
    full = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    full.update(env)
    full["COLUMNS"] = "400"  # rich must not wrap the one line
    return subprocess.run(
        [exe, *args], env=full, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    catalog = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(path)}))
    catalog.init()
    table = catalog.load_table("bronze.stocks_trades")
    table.append(make_rows(table, 0, 10))
    table.append(make_rows(table, 10, 10))
    return path


# ---- secrets ---------------------------------------------------------------------------------


def test_ctrl_c_while_the_cli_loads_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """Ctrl-C in the second `lake` spends importing pyarrow, pyiceberg and DuckDB printed a
    Python traceback. A `sitecustomize` raises KeyboardInterrupt (what SIGINT raises) exactly
    while `iceberg_lake.cli.app` loads, so the moment is certain rather than raced."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys\n"
        "class CtrlC:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'iceberg_lake.cli.app':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, CtrlC())\n"
    )
    pythonpath = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    done = _lake(["tables"], {"PYTHONPATH": pythonpath, "LAKE_DATA_DIR": str(tmp_path / "d")})
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "interrupted", done.stderr
    # Before that `try`, the console script imports only the two light packages (review13: the
    # settings module loaded first, and a Ctrl-C in its ~30 ms was still a traceback).
    probe = "import sys, iceberg_lake.cli; print(sorted(m for m in sys.modules if 'lake' in m))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.split() == ["['iceberg_lake',", "'iceberg_lake.cli']"], loaded.stdout


def test_a_ctrl_c_after_the_command_ended_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """newuser13: a Ctrl-C in the last few hundred milliseconds (the interpreter's shutdown,
    after the command printed its result) ended the process by the signal, so a finished run
    read as interrupted. Once the command has ended, SIGINT is ignored."""
    import signal

    from iceberg_lake.cli import main

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(sys, "argv", ["lake", "--version"])
    try:
        with pytest.raises(SystemExit) as done:
            main()
        assert done.value.code in (0, None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_redact_url_and_text() -> None:
    assert redact_url(f"nats://lake:{SECRET}@h:4222") == "nats://lake:***@h:4222"
    assert redact_url(f"nats://{SECRET}@h:4222") == "nats://***@h:4222"
    assert redact_url(f"nats://a:{SECRET}@h1:1,nats://b:{SECRET}@h2:2") == (
        "nats://a:***@h1:1,nats://b:***@h2:2"
    )
    assert redact_url(f"postgresql+psycopg2://lake:{SECRET}@db:5432/lake") == (
        "postgresql+psycopg2://lake:***@db:5432/lake"
    )
    assert SECRET not in redact_url(f"s3://bucket/x?X-Amz-Signature={SECRET}&a=1")
    assert redact_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    settings = load_settings(
        {"LAKE_NATS_URL": f"nats://lake:{SECRET}@h:4222", "LAKE_S3_SECRET_KEY": "sk-" + SECRET}
    )
    text = f"failed: nats://lake:{SECRET}@h:4222 (auth {SECRET}, key sk-{SECRET})"
    assert SECRET not in redact(text, settings)
    assert SECRET not in repr(settings)


def test_config_error_and_status_never_print_the_nats_password(tmp_path: Path) -> None:
    env = {"LAKE_DATA_DIR": str(tmp_path / "d"), "LAKE_NATS_URL": f"http://lake:{SECRET}@h:1"}
    bad = runner.invoke(app, ["status"], env=env)
    line = _one_line_error(bad.stderr, bad.exit_code)
    assert "LAKE_NATS_URL" in line and SECRET not in bad.output and "lake:***@h" in line
    env["LAKE_NATS_URL"] = f"nats://lake:{SECRET}@127.0.0.1:1"
    assert runner.invoke(app, ["init"], env=env).exit_code == 0  # status is read-only
    status = runner.invoke(app, ["status", "--nats-timeout", "0.5", "-o", "json"], env=env)
    assert status.exit_code == 0, status.output
    assert SECRET not in status.output and "lake:***@127.0.0.1:1" in status.output


@pytest.mark.integration
def test_serve_start_line_and_connect_error_redact_the_nats_password(
    lake_dir: Path, nats_server
) -> None:
    port = urlparse(nats_server.url).port
    # nats-server without auth accepts (and ignores) credentials: the start line must hide them
    env = {
        "LAKE_DATA_DIR": str(lake_dir),
        "LAKE_NATS_URL": f"nats://lake:{SECRET}@127.0.0.1:{port}",
        "LAKE_BRONZE_BATCH_SECONDS": "0.2",
    }
    served = _lake(["serve", "--tables", "bronze.stocks_trades", "--until-idle"], env)
    assert served.returncode == 0, served.stderr[-2000:]
    assert "lake:***@127.0.0.1" in served.stderr and SECRET not in served.stderr
    env["LAKE_NATS_URL"] = f"nats://lake:{SECRET}@127.0.0.1:1"
    failed = _lake(["serve", "--tables", "bronze.stocks_trades"], env)
    line = _one_line_error(failed.stderr, failed.returncode)
    assert "cannot connect to NATS at nats://lake:***@127.0.0.1:1" in line
    assert SECRET not in failed.stderr + failed.stdout


# ---- one line, no traceback --------------------------------------------------------------------


def test_bad_data_dirs_and_catalog_port_are_one_line_config_errors(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    if os.geteuid() == 0:
        unwritable = Path("/proc/sys/lake-data")  # root may write anywhere but there
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        unwritable = locked / "lake-data"
    cases = {
        str(a_file): "is not a directory",
        str(a_file / "sub"): "is not a directory",
        str(unwritable): "cannot be created",
    }
    for data_dir, expected in cases.items():
        result = runner.invoke(app, ["tables"], env={"LAKE_DATA_DIR": data_dir})
        line = _one_line_error(result.stderr, result.exit_code)
        assert "LAKE_DATA_DIR" in line and expected in line, line
    env = {
        "LAKE_DATA_DIR": str(tmp_path / "ok"),
        "LAKE_CATALOG_URI": f"postgresql://lake:{SECRET}@db:abc/lake",
    }
    result = runner.invoke(app, ["tables"], env=env)
    line = _one_line_error(result.stderr, result.exit_code)
    assert "LAKE_CATALOG_URI" in line and "port" in line and SECRET not in line
    with pytest.raises(ConfigError, match="LAKE_NATS_URL"):
        load_settings({"LAKE_NATS_URL": "nats://h:99999"})


def test_empty_query_bad_metrics_port_and_missing_manifest_list(lake_dir: Path) -> None:
    env = {"LAKE_DATA_DIR": str(lake_dir)}
    empty = runner.invoke(app, ["query", ""], env=env)
    assert "empty SQL" in _one_line_error(empty.stderr, empty.exit_code)
    port = runner.invoke(app, ["serve", "--metrics-port", "99999"], env=env)
    assert "--metrics-port" in _one_line_error(port.stderr, port.exit_code)
    no_rows = runner.invoke(app, ["query", "SET threads = 1", "-o", "json"], env=env)
    assert no_rows.exit_code == 0, no_rows.output

    table = LakeCatalog(load_settings(env)).load_table("bronze.stocks_trades")
    manifest_list = urlparse(table.current_snapshot().manifest_list).path
    os.remove(manifest_list)
    broken = _lake(["query", "SELECT count(*) FROM bronze.stocks_trades"], env)
    line = _one_line_error(broken.stderr, broken.returncode)
    assert "bronze.stocks_trades" in line and manifest_list in line


# ---- query sandbox ------------------------------------------------------------------------------


def test_sandbox_refuses_files_outside_the_warehouse_and_writes(lake_dir: Path) -> None:
    settings = load_settings({"LAKE_DATA_DIR": str(lake_dir)})
    warehouse = urlparse(settings.warehouse).path
    with Lake(settings) as open_lake:  # the CLI's default: a local tool, full DuckDB
        assert (
            open_lake.query("SELECT count(*) AS n FROM read_csv('/etc/passwd')")["n"][0].as_py() > 0
        )
    with Lake(settings, sandbox=True) as lake:
        n = lake.query("SELECT count(*) AS n FROM bronze.stocks_trades")["n"][0].as_py()
        assert n == 20
        refused = [
            "SELECT * FROM read_csv('/etc/passwd')",
            f"SELECT * FROM read_text('{lake_dir}/catalog.db')",
            "COPY (SELECT 1) TO '/tmp/lake-sandbox-escape.csv'",
            f"COPY (SELECT 1) TO '{warehouse}/bronze/stocks_trades/metadata/evil.json'",
            f"ATTACH '{lake_dir}/catalog.db' AS cat",
            "SET enable_external_access = true",
            "INSTALL httpfs",
        ]
        for sql in refused:
            with pytest.raises(LakeError) as info:
                lake.query(sql)
            assert "\n" not in str(info.value)
        assert not Path("/tmp/lake-sandbox-escape.csv").exists()
        assert not Path(f"{warehouse}/bronze/stocks_trades/metadata/evil.json").exists()
        # still works after the refusals: the lock holds, the views are recreated per query
        again = lake.query("SELECT count(*) AS n FROM bronze.stocks_trades", as_of=None)
        assert again["n"][0].as_py() == 20
    cli = runner.invoke(
        app,
        ["query", "--sandbox", "SELECT * FROM read_csv('/etc/passwd')"],
        env={"LAKE_DATA_DIR": str(lake_dir)},
    )
    assert "Permission" in _one_line_error(cli.stderr, cli.exit_code)


# ---- every error is one line: corrupt metadata, bad URLs and dirs, usage, output files, bugs ---


@pytest.fixture(scope="module")
def filled_lake(module_lake: LakeCatalog) -> Path:
    """The module's lake with 20 rows in bronze.stocks_trades (two commits: a previous
    metadata file exists). Tests that damage it restore it."""
    table = module_lake.load_table("bronze.stocks_trades")
    table.append(make_rows(table, 0, 10))
    table.append(make_rows(table, 10, 10))
    return module_lake.settings.data_dir


#: What a current metadata file can be damaged into: the line must name table and file anyway.
CORRUPTIONS = {
    "truncated": lambda good: good[: len(good) // 2],
    "not-table-metadata": lambda good: b'{"format-version": 2, "x": 1}',
    "unknown-format-version": lambda good: b'{"format-version": 9}',
    "invalid-utf8": lambda good: b"\xff\xfe" + good[2:],
    "empty": lambda good: b"",
}
#: The commands that load a table first (the audit's list).
LOADING_COMMANDS = [
    ["tables"],
    ["status", "--nats-timeout", "0.2"],
    ["describe", "bronze.stocks_trades"],
    ["query", "SELECT count(*) FROM bronze.stocks_trades"],
    ["check"],
    ["snapshot", "list", "bronze.stocks_trades"],
]


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_current_metadata_is_one_line_naming_table_and_file(
    filled_lake: Path, kind: str
) -> None:
    env = {"LAKE_DATA_DIR": str(filled_lake)}
    table = LakeCatalog(load_settings(env)).load_table("bronze.stocks_trades")
    current = urlparse(table.metadata_location).path
    previous = table.metadata.metadata_log[-1].metadata_file
    good = Path(current).read_bytes()
    Path(current).write_bytes(CORRUPTIONS[kind](good))
    try:
        # Every loading command once; the other damages through one command (budget).
        for args in LOADING_COMMANDS if kind == "truncated" else LOADING_COMMANDS[2:3]:
            result = runner.invoke(app, args, env=env)
            line = _one_line_error(result.stderr, result.exit_code)
            assert "bronze.stocks_trades" in line and current in line, (args, line)
            assert "cannot be parsed" in line and previous in line, (args, line)
        if kind == "truncated":  # the installed executable too
            line = _one_line_error(*_stderr_rc(_lake(["tables"], env)))
            assert "bronze.stocks_trades" in line and current in line
            # A table loaded before the damage, reloaded inside `catalog_errors` (maintenance).
            with pytest.raises(CorruptMetadataError, match="refreshing: table metadata"):
                with catalog_errors("refreshing"):
                    table.refresh()
    finally:
        Path(current).write_bytes(good)
    assert runner.invoke(app, ["describe", "bronze.stocks_trades"], env=env).exit_code == 0


def test_a_missing_current_metadata_file_is_one_line_not_a_retried_outage(
    filled_lake: Path,
) -> None:
    """The catalog names a metadata file that is gone (a catalog restored from a backup older
    than the table's last 20 metadata versions, each commit deleting older ones): it was
    "storage unavailable", a transient error `lake serve` retried forever (ops6)."""
    env = {"LAKE_DATA_DIR": str(filled_lake)}
    current = Path(
        urlparse(
            LakeCatalog(load_settings(env)).load_table("bronze.stocks_trades").metadata_location
        ).path
    )
    kept = current.with_name(current.name + ".kept")
    current.rename(kept)
    try:
        with pytest.raises(CorruptMetadataError, match="does not exist: the catalog database"):
            LakeCatalog(load_settings(env)).load_table("bronze.stocks_trades")
        result = runner.invoke(app, ["check"], env=env)
        line = _one_line_error(result.stderr, result.exit_code)
        assert str(current) in line and "restored from a backup" in line, line
    finally:
        kept.rename(current)


def _stderr_rc(done: subprocess.CompletedProcess) -> tuple[str, int]:
    return done.stderr, done.returncode


@pytest.mark.parametrize(
    ("variable", "value", "command"),
    [
        ("LAKE_NATS_URL", f"nats://lake:{SECRET}@[::1", "tables"),
        ("LAKE_NATS_URL", "nats://127.0.0.1:4222,nats://[::1", "tables"),
        ("LAKE_CATALOG_URI", f"postgresql://lake:{SECRET}@[::1/lake", "tables"),
        ("LAKE_S3_ENDPOINT", "http://[::1", "tables"),
        ("LAKE_WAREHOUSE", "s3://[bucket/x", "tables"),
        ("LAKE_DATA_DIR", "/proc/nope", "init"),
        ("LAKE_DATA_DIR", "/proc/nope/deeper", "init"),
        ("LAKE_WAREHOUSE", "/proc/nope/warehouse", "init"),
    ],
)
def test_malformed_urls_and_uncreatable_dirs_are_one_line_config_errors(
    tmp_path: Path, variable: str, value: str, command: str
) -> None:
    env = {"LAKE_DATA_DIR": str(tmp_path / "data"), variable: value}
    result = runner.invoke(app, [command], env=env)
    line = _one_line_error(result.stderr, result.exit_code)
    assert variable in line and SECRET not in result.output, line
    assert ("not a valid URL" in line) or ("cannot be created" in line), line


def _fail_with(exc: BaseException) -> Any:
    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return fail


def test_an_unexpected_error_is_one_redacted_line_and_debug_shows_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last resort: a bug (here: a command's settings step raising RuntimeError)."""
    import iceberg_lake.cli.common as common

    env = {"LAKE_DATA_DIR": str(tmp_path / "d"), "LAKE_NATS_URL": f"nats://lake:{SECRET}@h:1"}
    boom = RuntimeError(f"boom at nats://lake:{SECRET}@h:1 with {SECRET}\nsecond line")
    monkeypatch.setattr(common, "load_settings", _fail_with(boom))
    result = runner.invoke(app, ["tables"], env=env)
    line = _one_line_error(result.stderr, result.exit_code)
    assert result.exit_code == 1 and SECRET not in result.output
    assert line.startswith("error: internal error: RuntimeError: boom at nats://lake:***@h:1")
    assert "second line" in line and "--log-level debug" in line
    debug = runner.invoke(app, ["--log-level", "debug", "tables"], env=env)
    assert debug.exit_code == 1 and "Traceback" in debug.stderr and "RuntimeError" in debug.stderr
    assert SECRET not in debug.output  # the traceback is redacted like the line
    # An error of the machine (full disk, permissions) is not a bug of the lake.
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "d" / "catalog.db"))
    monkeypatch.setattr(common, "load_settings", _fail_with(full))
    result = runner.invoke(app, ["tables"], env=env)
    line = _one_line_error(result.stderr, result.exit_code)
    assert line == f"error: No space left on device: {tmp_path / 'd' / 'catalog.db'}", line
    # Ctrl-C and an explicit exit keep their codes; neither is reported as an error.
    for exc, code in ((KeyboardInterrupt(), 130), (SystemExit(3), 3)):
        monkeypatch.setattr(common, "load_settings", _fail_with(exc))
        result = runner.invoke(app, ["tables"], env=env)
        assert result.exit_code == code and "internal error" not in result.output, result.output


@pytest.mark.parametrize(
    "args",
    [
        ["check", "--since", "bogus"],
        ["check", "--until", "bogus"],
        ["dead-letters", "list", "--since", "bogus"],
        ["dead-letters", "replay", "--since", "bogus", "--dry-run"],
        ["check", "--since", "100000000000d"],  # review9: internal error: OverflowError
        ["dead-letters", "list", "--since", "100000000000d"],
        ["dead-letters", "list", "--since", "99999999999999999999999999"],
        ["replay", "--tables", "bronze.stocks_trades", "--start", "yesterday"],
        ["bars", "bronze.stocks_trades", "--start", "2025-12-06", "--every", "soon"],
        ["check", "--nope"],
        ["--bogus", "tables"],
        ["--log-level", "loud", "tables"],
        ["no-such-command"],
        ["describe"],
        ["query", "SELECT 1", "-o", "parquet"],
    ],
    ids=" ".join,
)
def test_bad_values_and_usage_are_one_line_exit_1_in_every_command(
    filled_lake: Path, args: list[str]
) -> None:
    result = runner.invoke(app, args, env={"LAKE_DATA_DIR": str(filled_lake)})
    line = _one_line_error(result.stderr, result.exit_code)
    assert result.exit_code == 1 and line.startswith("error: "), line
    assert "internal error" not in line, line  # a bad value, not a bug of the lake
    assert "╭" not in result.output and "Usage:" not in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["bars", "bronze.stocks_trades", "--start", "1710163860"],
            "--start: 1710163860 looks like Unix seconds; give nanoseconds "
            "(1710163860000000000) or an ISO time (2024-03-11T13:31:00Z)",
        ),
        (
            ["bars", "bronze.stocks_trades", "--start", "1710163860000000000"]
            + ["--end", "1710163920000"],
            "--end: 1710163920000 looks like Unix milliseconds",
        ),
        (
            ["check", "--since", "1710163860000000"],
            "--since: 1710163860000000 looks like Unix micro",
        ),
        (
            ["bars", "bronze.stocks_trades", "--start", "20240311", "--end", "20240312"],
            "--start: 20240311 looks like a date: give 2024-03-11",
        ),
        (
            ["asof", "bronze.stocks_trades", "bronze.stocks_quotes", "--start", "2024-03-11"]
            + ["--lookback", "-5"],
            "--lookback: must be 0-315,360,000 seconds, got -5",
        ),
        (
            ["bars", "bronze.stocks_trades", "--start", "2024-03-12", "--end", "2024-03-11"],
            "bars start (2024-03-12T00:00:00+00:00) must be before end (2024-03-11T00:00:00+00:00)",
        ),
    ],
    ids=["seconds", "ms", "us", "date-without-dashes", "negative-lookback", "end-before-start"],
)
def test_unix_seconds_or_ms_are_refused_not_zero_rows(
    filled_lake: Path, args: list[str], expected: str
) -> None:
    """`--start 1710163860` once read as a date (any 10 characters) and gave 0 rows, silently."""
    result = runner.invoke(app, args, env={"LAKE_DATA_DIR": str(filled_lake)})
    line = _one_line_error(result.stderr, result.exit_code)
    assert expected in line, line


def test_a_start_date_is_recognised_by_its_pattern() -> None:
    day = 1765843200 * 10**9  # 2025-12-16T00:00Z
    assert parse_window("2025-12-16", None, None, "XNYS") == (day, day + 86_400 * 10**9)
    with pytest.raises(typer.BadParameter, match="--end is required"):
        parse_window("2025-12-16T14:30Z", None, None, "XNYS")  # a time, not a date
    assert parse_window("1", "2", None, "XNYS") == (1, 2)  # tiny ns stay ns


@pytest.mark.parametrize(
    ("every", "ok"), [("7d", True), ("8d", False), ("300000d", False), (f"{7 * 86400 + 1}s", False)]
)
def test_bar_width_is_capped_at_seven_days(filled_lake: Path, every: str, ok: bool) -> None:
    result = runner.invoke(
        app,
        ["bars", "bronze.stocks_trades", "--every", every, "--start", "2025-12-06", "-o", "json"],
        env={"LAKE_DATA_DIR": str(filled_lake)},
    )
    if ok:
        assert result.exit_code == 0, result.output
        assert sum(bar["trades"] for bar in json.loads(result.stdout)) == 20
    else:
        line = _one_line_error(result.stderr, result.exit_code)
        assert every in line and "maximum of 7d" in line, line


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "--tables", "bronze.stocks_trades", "--format", "arrow"],
        ["replay", "--tables", "bronze.stocks_trades", "--format", "parquet"],
        ["replay", "--tables", "bronze.stocks_trades", "--format", "ndjson"],
        ["bars", "bronze.stocks_trades", "--start", "2025-12-06", "-o", "parquet"],
        ["bars", "bronze.stocks_trades", "--start", "2025-12-06", "-o", "csv"],
        ["query", "SELECT 1 AS x", "-o", "parquet"],
        ["query", "SELECT 1 AS x", "-o", "json"],
    ],
    ids=" ".join,
)
def test_an_output_file_that_cannot_be_written_is_one_line(
    filled_lake: Path, tmp_path: Path, args: list[str]
) -> None:
    out = tmp_path / "no" / "such" / "dir" / "x.out"
    catalog = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(filled_lake)}))
    before = set(catalog.load_table("bronze.stocks_trades").metadata.refs)
    result = runner.invoke(app, [*args, "--out", str(out)], env={"LAKE_DATA_DIR": str(filled_lake)})
    line = _one_line_error(result.stderr, result.exit_code)
    assert f"cannot write --out {out}: No such file or directory" in line, line
    # Refused before any work: a replay tagged nothing.
    assert set(catalog.load_table("bronze.stocks_trades").metadata.refs) == before


def test_speed_with_a_file_format_is_refused(filled_lake: Path, tmp_path: Path) -> None:
    # quant16: accepted, ignored (two minutes of events written in 1.75 s), recorded as applied.
    args = ["replay", "--tables", "bronze.stocks_trades", "--format", "parquet", "--speed", "1"]
    result = runner.invoke(
        app, [*args, "--out", str(tmp_path / "x.parquet")], env={"LAKE_DATA_DIR": str(filled_lake)}
    )
    line = _one_line_error(result.stderr, result.exit_code)
    assert "--format parquet writes a file as fast as it can" in line, line
    assert not (tmp_path / "x.parquet").exists()


def test_an_unwritable_replay_manifest_is_one_line(filled_lake: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "missing" / "m.json"
    catalog = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(filled_lake)}))
    before = set(catalog.load_table("bronze.stocks_trades").metadata.refs)
    result = runner.invoke(
        app,
        ["replay", "--tables", "bronze.stocks_trades", "--manifest", str(manifest)],
        env={"LAKE_DATA_DIR": str(filled_lake)},
    )
    line = _one_line_error(result.stderr, result.exit_code)
    assert f"cannot write --manifest {manifest}: No such file or directory" in line, line
    # Refused before the replay ran: no events written, no replay-* tag made.
    assert result.stdout == ""
    assert set(catalog.load_table("bronze.stocks_trades").metadata.refs) == before


def test_every_minus_t_is_one_table() -> None:
    """`-t` is `--table` in every command (repeatable only in `lake check`, which reads several
    tables: there a second `-t` must add a table, not silently replace the first); `--tables`
    (comma-separated) has no short form."""
    import typer.main

    def walk(command: Any, path: str) -> Iterator[tuple[str, Any]]:
        for param in command.params:
            yield path, param
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    seen = []
    for path, param in walk(typer.main.get_command(app), "lake"):
        if "-t" in param.opts:
            seen.append(path)
            assert param.opts == ["--table", "-t"], (path, param.opts)
            assert param.multiple == (path == "lake check"), (path, param.multiple)
        if "--tables" in param.opts:
            assert param.opts == ["--tables"], (path, param.opts)
    assert "lake check" in seen and len(seen) >= 4, seen


def test_check_table_and_tables_combine(filled_lake: Path) -> None:
    env = {"LAKE_DATA_DIR": str(filled_lake)}
    both = runner.invoke(
        app,
        ["check", "-t", "bronze.stocks_trades", "--tables", "bronze.stocks_quotes", "-o", "json"],
        env=env,
    )
    assert both.exit_code == 0, both.output
    checked = {c["table"] for c in json.loads(both.stdout)["checks"]}
    assert checked == {"bronze.stocks_trades", "bronze.stocks_quotes"}
    repeated = runner.invoke(
        app,
        ["check", "-t", "bronze.stocks_trades", "-t", "bronze.stocks_quotes", "-o", "json"],
        env=env,
    )
    assert repeated.exit_code == 0, repeated.output
    assert {c["table"] for c in json.loads(repeated.stdout)["checks"]} == checked


def test_csv_output_is_data_only_or_refused(filled_lake: Path) -> None:
    """Under `-o csv` stdout is CSV or nothing: `lake status` (a report of several sections)
    and `lake migrate up` printed their text report there (review9)."""
    env = {"LAKE_DATA_DIR": str(filled_lake)}
    status = runner.invoke(app, ["-o", "csv", "status"], env=env)
    line = _one_line_error(status.stderr, status.exit_code)
    assert "no CSV form" in line and "-o json" in line, line
    assert status.stdout == ""
    migrate = runner.invoke(app, ["-o", "csv", "migrate", "up", "--dry-run"], env=env)
    assert migrate.exit_code == 0, migrate.output
    header = migrate.stdout.splitlines()[0]
    assert header == "version,name,dry_run,recorded,duration_ms,changes", migrate.stdout
    assert "nothing to apply" not in migrate.stdout and "dry run" not in migrate.stdout


def test_docs19_odd_inputs_are_one_line_and_change_nothing(tmp_path: Path) -> None:
    """docs19: a bad LAKE_LOG_LEVEL was named as the flag; a refused `lake init` had made the
    warehouse directory; `--prefix 'a.>'` was accepted; `lake compact --as-of nosuch` said one
    thing six times; `lake load` in a fresh directory left an empty catalog behind."""
    env = {"LAKE_DATA_DIR": str(tmp_path / "data")}
    fresh = runner.invoke(app, ["load", str(tmp_path / "x.csv")], env=env)
    assert fresh.exit_code == 1 and "no lake at" in fresh.output
    assert not (tmp_path / "data").exists()
    assert runner.invoke(app, ["init"], env=env).exit_code == 0

    level = runner.invoke(app, ["tables"], env={**env, "LAKE_LOG_LEVEL": "verbose"})
    assert level.exit_code == 1 and "LAKE_LOG_LEVEL" in level.output
    other = tmp_path / "w h"
    init = runner.invoke(app, ["init"], env={**env, "LAKE_WAREHOUSE": other.as_uri()})
    assert init.exit_code == 1 and "LAKE_WAREHOUSE is" in init.output
    assert not other.exists()
    replay = runner.invoke(
        app,
        ["replay", "--tables", "bronze.stocks_trades", "--start", "2025-12-16T14:00Z",
         "--end", "2025-12-16T15:00Z", "--to-nats", "--prefix", "a.>"],
        env={**env, "LAKE_NATS_URL": "nats://127.0.0.1:1"},
    )  # fmt: skip
    assert replay.exit_code == 1 and "invalid NATS subject 'a.>." in replay.output
    compact = runner.invoke(app, ["compact", "--as-of", "nosuch", "--date", "2025-12-16"], env=env)
    errors = [line for line in compact.output.splitlines() if line.startswith("error:")]
    assert compact.exit_code == 1
    assert errors == ["error: no tag or snapshot 'nosuch' in any Bronze table (lake snapshot list)"]


def test_after_a_catalog_restore_missing_old_metadata_files_are_one_line_per_table(
    tmp_path: Path,
) -> None:
    """ops19 #5: the catalog row of two tables set back to a version 8 commits old (a catalog
    backup restored): each of the next commits tries to delete one metadata file of its log
    that the newer timeline already deleted, and pyiceberg warns each time. At `--log-level
    info` (compose's level) one process says so once per table; at `debug` every time."""
    import sqlite3

    env = {"LAKE_DATA_DIR": str(tmp_path / "data"), "LAKE_LOG_LEVEL": "INFO"}
    lake = LakeCatalog(load_settings(env))
    lake.init()
    tables = ("bronze.stocks_trades", "bronze.stocks_quotes")
    restored = {}
    for ident in tables:
        table = lake.load_table(ident)
        for k in range(30):  # past the 20 metadata versions each table keeps
            table.append(make_rows(table, 10 * k, 2))
            if k == 21:
                restored[ident] = table.metadata_location
    with sqlite3.connect(tmp_path / "data" / "catalog.db") as con:
        for ident, location in restored.items():
            con.execute(
                "UPDATE iceberg_tables SET metadata_location = ? WHERE table_name = ?",
                (location, ident.split(".")[1]),
            )

    notes = []
    for k in range(4):  # four commits to each table, in one process
        tag = runner.invoke(
            app, ["snapshot", "tag", f"t{k}", "--tables", ",".join(tables)], env=env
        )
        assert tag.exit_code == 0, tag.output
        notes += [x for x in tag.stderr.splitlines() if "Failed to delete metadata file" in x]
    assert len(notes) == 2 and {n.split("/metadata/")[0].rsplit("/", 1)[1] for n in notes} == {
        "stocks_trades",
        "stocks_quotes",
    }, notes

    debug = runner.invoke(
        app,
        ["snapshot", "tag", "t9", "--tables", ",".join(tables)],
        env=env | {"LAKE_LOG_LEVEL": "DEBUG"},
    )
    assert debug.exit_code == 0, debug.output
    assert debug.stderr.count("Failed to delete metadata file") == 2, debug.stderr
