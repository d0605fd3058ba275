"""Child server processes for benches: start, learn the port, read CPU time, stop. Linux only.

A child prints ``PORT <n>`` on stdout once it listens; its stderr goes to a log file, shown if
it fails to start. Each child gets ``PR_SET_PDEATHSIG`` so it dies with the bench even when the
bench is killed outright, and ``stop()`` ends it by its own pid: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import importlib.metadata
import os
import platform
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CPU_TICK_S = 1 / os.sysconf("SC_CLK_TCK")
"""The resolution of ``cpu_seconds``."""
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` (all its threads), from /proc/PID/stat.

    The resolution is one clock tick (1/SC_CLK_TCK, usually 10 ms): measure batches that take
    hundreds of milliseconds of CPU or more.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()  # comm may hold spaces; fields[0] is field 3
    return (int(fields[11]) + int(fields[12])) * CPU_TICK_S


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def spawn(name: str, module: str, args: list[str], log: Path) -> Child:
    """Start ``python -m module args`` with this interpreter; read its port with ``wait_port``."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            preexec_fn=_die_with_parent,  # the bench starts no threads before its children
            cwd=Path(__file__).resolve().parent.parent,
        )
    return Child(name, proc, log)


def wait_port(child: Child, timeout_s: float) -> int:
    """Block until ``child`` prints ``PORT <n>``; raise RuntimeError with its log if it does not."""
    assert child.proc.stdout is not None
    fd = child.proc.stdout.fileno()
    deadline = time.monotonic() + timeout_s
    out = b""
    while b"\n" not in out:
        left = deadline - time.monotonic()
        if left <= 0 or child.proc.poll() is not None:
            why = "timed out" if left <= 0 else f"exited with {child.proc.returncode}"
            raise RuntimeError(f"{child.name} did not start ({why}):\n{child.log_tail()}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                continue  # EOF: the poll above notices the exit
            out += chunk
    line = out.split(b"\n", 1)[0].decode()
    if not line.startswith("PORT "):
        raise RuntimeError(f"{child.name} printed {line!r}, not 'PORT <n>'")
    child.port = int(line.split()[1])
    return child.port


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        uvloop_version = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        uvloop_version = "not installed"
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": f"{len(os.sched_getaffinity(0))} usable of {os.cpu_count()}",
        "cpu": model,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": uvloop_version,
    }


def best_cpu(run: Callable[[], None], repeats: int = 5) -> float:
    """The least CPU time (this process) of ``repeats`` calls of ``run``: the figure least disturbed by others."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best
