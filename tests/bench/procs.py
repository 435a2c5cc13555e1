"""Processes of the benchmark: start them, find their ports, read their CPU time and memory from /proc.

A measured process is always a child of the bench (never the bench itself), so its CPU-seconds
are its own: user + system time of all its threads, from ``/proc/<pid>/stat``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent.parent
PYTHON = sys.executable
_TICKS = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"  # everything binds and talks to loopback only


def free_port() -> int:
    """A port that was free a moment ago (for programs that cannot report the port they bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def announce(**ports: int) -> None:
    """A helper server's one line on stdout telling the bench where it listens."""
    print(json.dumps(ports), flush=True)


@dataclass(frozen=True)
class Usage:
    cpu_s: float  # user + system, all threads
    rss_bytes: int  # resident now
    peak_rss_bytes: int  # high-water mark since start


LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


async def serve_logs_export(export, options: list[tuple[str, int]]) -> None:
    """Serve LogsService/Export with ``export`` (raw bytes in and out) on a free port until SIGTERM/SIGINT."""
    import asyncio

    import grpc

    server = grpc.aio.server(options=options)
    handler = grpc.method_handlers_generic_handler(LOGS_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    announce(grpc=port)
    await stop.wait()
    await server.stop(1)


def slug(name: str) -> str:
    """A scenario name as a file name."""
    return "".join(c if c.isalnum() else "_" for c in name)


class Child:
    """A started helper or measured process; stderr goes to a log file shown when it fails."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None, log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{slug(name)}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open for the child's life, closed in stop()
        self.popen = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self.pid = self.popen.pid

    def read_announcement(self, timeout_s: float = 30.0) -> dict[str, int]:
        """The JSON line a helper prints once it listens (see ``announce``)."""
        assert self.popen.stdout is not None
        ready, _, _ = select.select([self.popen.stdout], [], [], timeout_s)
        line = self.popen.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"{self.name} did not start within {timeout_s:.0f}s:\n{self.log_tail()}")
        return json.loads(line)

    def usage(self) -> Usage:
        with open(f"/proc/{self.pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) ": field 3 onwards
        cpu_s = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)
        rss = peak = 0
        with open(f"/proc/{self.pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"VmHWM:"):
                    peak = int(line.split()[1]) * 1024
        return Usage(cpu_s, rss, peak)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(f"    {line}" for line in text[-lines:])

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log.close()
        return self.popen.returncode


def wait_until(predicate, timeout_s: float, interval_s: float = 0.05, what: str = "condition") -> None:
    """Poll ``predicate`` until true; bounded by ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def helper_argv(script: str, *args: str) -> list[str]:
    return [PYTHON, str(BENCH_DIR / script), *args]
