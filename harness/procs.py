"""Child processes: each in its own session, logged to a file, registered so that one call stops them all.

A child in its own session does not get the terminal's Ctrl-C (the harness decides the order things stop in),
and stopping its process group also stops what it started (spot-sim's workers, a shell's children).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


class HarnessError(RuntimeError):
    """Something the harness started did not work (as opposed to a check that failed)."""


class Timeout(HarnessError, TimeoutError):
    """A condition was not met by its deadline."""


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port nobody listens on now, for a server that cannot take port 0: below the kernel's ephemeral range,
    since a port the kernel picked is the kind it also hands out as the source port of a new outgoing
    connection, which could take it before the server binds ("address already in use"). Never the same port
    twice in this process."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            high = min(int(f.read().split()[0]), 32768)
    except (OSError, ValueError, IndexError):
        high = 32768
    for _ in range(1000):
        port = random.randrange(15000, high)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise HarnessError(f"no free port in 15000..{high}")


def wait_for(what: str, timeout: float, f: Callable[[], Any], every: float = 0.2) -> Any:
    """Call `f` until it returns something truthy and return that; raise Timeout naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def tail(path: os.PathLike | str, n: int = 30) -> str:
    """The last `n` lines of a log, for an error message."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def usage(pid: int) -> dict:
    """Peak RSS (VmHWM, KiB) and CPU seconds (utime + stime) of a live process, from /proc."""
    out: dict = {"rss_peak_kib": None, "cpu_s": None}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["rss_peak_kib"] = int(line.split()[1])
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        pass
    return out


class Proc:
    """One child process in its own session, its output (stdout and stderr) appended to `log_path`."""

    def __init__(self, name: str, cmd: list, log_path: Path, env: dict | None = None, cwd: Path | None = None):
        self.name = name
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The child keeps its own copy of the descriptor: ours is closed at once, nothing to leak.
        with open(self.log_path, "ab") as log:
            self.p = subprocess.Popen(
                [str(c) for c in cmd],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.p.pid

    @property
    def returncode(self) -> int | None:
        return self.p.returncode

    def alive(self) -> bool:
        return self.p.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        return self.p.wait(timeout)

    def send(self, sig: int, group: bool = True) -> None:
        """Send `sig` to the process group (or to the process alone), if it is still there."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.p.pid, sig)
            else:
                os.kill(self.p.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> int | None:
        """`sig` to the process group, up to `grace` seconds to exit, then SIGKILL to whatever is left of the
        group (the leader may be gone while a child lingers). Returns the exit status."""
        if self.alive():
            self.send(sig)
            try:
                self.p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                print(f"{self.name} (pid {self.p.pid}) still running after {grace:.0f}s: SIGKILL", file=sys.stderr)
        self.send(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.p.wait(timeout=5)
        return self.p.returncode


class Registry:
    """The processes one harness started, stopped together (newest first: a server outlives its clients)."""

    def __init__(self) -> None:
        self.live: list[Proc] = []

    def spawn(self, name: str, cmd: list, log_path: Path, env: dict | None = None, cwd: Path | None = None) -> Proc:
        p = Proc(name, cmd, log_path, env=env, cwd=cwd)
        self.live.append(p)
        return p

    def stop(self, p: Proc, sig: int = signal.SIGTERM, grace: float = 10.0) -> int | None:
        rc = p.stop(sig, grace)
        if p in self.live:
            self.live.remove(p)
        return rc

    def stop_all(self, sig: int = signal.SIGTERM, grace: float = 10.0, grace_of: dict | None = None) -> None:
        """Stop every live process; `grace_of` gives some of them (by Proc) another grace."""
        for p in reversed(list(self.live)):
            self.stop(p, sig, (grace_of or {}).get(p, grace))
