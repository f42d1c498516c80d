"""Starting, watching and stopping the benchmark's server processes.

Every process is started in its own session (process group) and remembered by `Processes`,
which stops them all on exit, error or not: SIGTERM to the group, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import ctypes
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

from bench.config import IDLE_MODEL, MAIN_MODEL, ONE_MODEL, PACED_MODEL, RATE_MODEL, Config

ROOT = Path(__file__).resolve().parent.parent
_SERVICE_ENV_PREFIXES = ("AI_", "ANTHROPIC_", "OPENAI_")
_SERVICE_ENV_NAMES = {"HOST", "PORT", "DATABASE_URL", "TEST_DATABASE_URL"}
PR_SET_PDEATHSIG = 1


def _find_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_prctl = _find_prctl()  # looked up here, so that the forked child only makes the call


def die_with_parent() -> None:
    """`preexec_fn` for a child: get SIGTERM when the benchmark process dies, however it dies (Linux)."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


ALL_CPUS = frozenset(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Placement:
    """Which CPUs the measured server runs on, and which the rest (fake upstream, load generator).

    A server with a core of its own does the same work in the same pieces from run to run; one
    that competes with the load for two cores reads bigger or smaller batches of upstream events
    depending on who got scheduled, and its CPU per token wanders by a fifth."""

    server: frozenset[int]
    rest: frozenset[int]

    @classmethod
    def split(cls) -> Placement | None:
        """The first CPU for the server, the others for the rest; None with fewer than two."""
        cpus = sorted(ALL_CPUS)
        if len(cpus) < 2:
            return None
        return cls(frozenset(cpus[:1]), frozenset(cpus[1:]))

    def describe(self) -> str:
        return f"server on CPU {_cpus(self.server)}, fake upstream and load generator on CPU {_cpus(self.rest)}"


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


class ServerFailed(RuntimeError):
    """A server process exited or never became healthy."""


@dataclass
class Server:
    """One running server: its process (and any children) and where it listens."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    started_at: float = 0.0  # time.monotonic() just before the process was started
    healthy_after: float = math.nan  # seconds from start until /health first answered 200

    def processes(self) -> list[psutil.Process]:
        """The process and its children (workers), as psutil sees them now."""
        try:
            parent = psutil.Process(self.proc.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """User + system CPU time consumed so far, summed over the process tree."""
        total = 0.0
        for process in self.processes():
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def rss_bytes(self) -> int:
        total = 0
        for process in self.processes():
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def connections_to(self, port: int) -> int:
        """Established TCP connections from this process tree to `port` (its upstream)."""
        count = 0
        for process in self.processes():
            try:
                conns = process.net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            count += sum(1 for c in conns if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)
        return count

    def loaded(self, *names: str) -> dict[str, bool]:
        """Whether each of `names` (a package with a compiled module: `uvloop`, `orjson`) is
        loaded in the process tree, as its memory map shows: which loop and codec it really runs."""
        found = dict.fromkeys(names, False)
        for process in self.processes():
            try:
                maps = Path(f"/proc/{process.pid}/maps").read_text()
            except OSError:
                continue
            for name in names:
                found[name] = found[name] or f"/{name}/" in maps
        return found

    def runtime(self) -> dict[str, str | bool]:
        """The event loop (`uvloop` or `asyncio`) and whether orjson is loaded, from the memory map."""
        loaded = self.loaded("uvloop", "orjson")
        return {"loop": "uvloop" if loaded["uvloop"] else "asyncio", "orjson": loaded["orjson"]}

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """Owns every process the benchmark starts; `close()` stops them all."""

    def __init__(self, tmpdir: Path, server_python: str | None = None, placement: Placement | None = None) -> None:
        self.tmpdir = tmpdir
        # The interpreter of the measured servers (service and baseline); others use this one.
        self.server_python = server_python or sys.executable
        self.placement = placement
        self._procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self,
        name: str,
        args: list[str],
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
        python: str | None = None,
        cpus: frozenset[int] = ALL_CPUS,
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Start `python *args` from the repository root, in a new session, output to a log file,
        on `cpus` (and its children with it)."""

        def preexec() -> None:
            die_with_parent()
            os.sched_setaffinity(0, cpus)

        log_path = self.tmpdir / f"{name}-{len(self._procs)}.log"
        # The service reads its settings from the environment: only the benchmark's own apply.
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_SERVICE_ENV_PREFIXES) and k not in _SERVICE_ENV_NAMES
        }
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [python or sys.executable, *args],
                cwd=ROOT,
                env={**inherited, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else log,
                stderr=log,
                start_new_session=True,
                preexec_fn=preexec,  # noqa: PLW1509 - this process starts no threads
            )
        self._procs.append(proc)
        return proc, log_path

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
        """SIGTERM to the process group, SIGKILL after `grace` seconds."""
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc, signal.SIGKILL)  # workers left behind by a parent that already exited
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        if proc.stdout is not None:
            proc.stdout.close()

    def close(self) -> None:
        for proc in reversed(self._procs):
            self.stop(proc)
        self._procs.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the process id
    except (ProcessLookupError, PermissionError):
        pass


def read_first_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first stdout line of `proc` (the fake upstream prints its URL), or ServerFailed."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            raise ServerFailed(f"no start-up line within {timeout:.0f} s (exit status {proc.poll()})")
        ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.2))
        if ready:
            byte = os.read(proc.stdout.fileno(), 1)
            if not byte:
                continue
            data += byte
    return data.decode().strip()


async def wait_healthy(server: Server, timeout: float = 30.0, poll: float = 0.1) -> None:
    """Poll GET /health every `poll` s until it answers 200; ServerFailed if the process exits or
    time runs out."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise ServerFailed(f"{server.name} exited with status {server.proc.returncode}:\n{server.log_tail()}")
            try:
                async with session.get(server.url + "/health") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(poll)
    raise ServerFailed(f"{server.name} not healthy within {timeout:.0f} s:\n{server.log_tail()}")


def start_upstream(
    procs: Processes, cfg: Config, max_seconds: float
) -> tuple[subprocess.Popen[bytes], str]:
    """The fake upstream process (on the rig's event loop) and its base URL."""
    args = ["-m", "bench.upstream", "--tokens", str(cfg.tokens), "--token-delay", str(cfg.token_delay)]
    args += [f"--scenario={scenario}" for scenario in cfg.upstream_scenarios()]
    args += ["--loop", cfg.rig_loop, "--max-seconds", str(max_seconds)]
    cpus = procs.placement.rest if procs.placement else ALL_CPUS
    proc, _ = procs.spawn("upstream", args, stdout_pipe=True, cpus=cpus)
    return proc, read_first_line(proc, timeout=30)


SERVICE_MODELS = ",".join(f"anthropic/{m}" for m in (MAIN_MODEL, IDLE_MODEL, ONE_MODEL, PACED_MODEL, RATE_MODEL))
# Settings the benchmark changes from the shipped defaults so that nothing but CPU limits a run;
# the overload phase keeps the shipped ones (`shipped_limits`), which decide how overload ends.
_BENCH_LIMITS = {
    "AI_FIRST_TOKEN_TIMEOUT": "3600",
    "AI_REQUEST_TIMEOUT": "3600",
    "AI_KEEPALIVE_INTERVAL": "3600",
    "AI_MAX_TOTAL_STREAMS": "0",
    # Capacity and memory are measured without shedding; the overload phase runs the shipped rule.
    "AI_SHED_LOOP_LAG_MS": "0",
}


def service_env(
    upstream_url: str, port: int, tmpdir: Path, *, loop: str | None = None, shipped_limits: bool = False
) -> dict[str, str]:
    """The service's environment: the fake upstream as its only endpoint, every bench model in its
    chain (a request naming one starts there; `bench-rate50`, last, has nothing to fall back to);
    `loop` sets AI_EVENT_LOOP (the event loop the service is asked to run on)."""
    env = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ANTHROPIC_API_KEY": "sk-bench",
        "ANTHROPIC_BASE_URL": upstream_url,
        "AI_MODELS": SERVICE_MODELS,
        "AI_LOG_LEVEL": "warning",
        "AI_LOG_FORMAT": "json",
        "DATABASE_URL": f"sqlite:///{tmpdir}/bench.db",
        # All the load comes from one client address: per-client limits off (0 = none).
        "AI_RATE_LIMIT_RPM": "0",
        "AI_MAX_CONCURRENT_STREAMS": "0",
        "AI_SHUTDOWN_GRACE": "0",  # the benchmark stops servers between measurements: no draining
    }
    if not shipped_limits:
        env.update(_BENCH_LIMITS)
    if loop:
        env["AI_EVENT_LOOP"] = loop
    return env


async def start_server(
    procs: Processes,
    kind: str,
    upstream_url: str,
    port: int,
    workers: int | None = None,
    *,
    loop: str | None = None,
    env: dict[str, str] | None = None,
    shipped_limits: bool = False,
    poll: float = 0.1,
) -> Server:
    """Start the service (`kind="service"`) or the bare baseline and wait for its /health, on the
    placement's server CPU if there is one (there is none when the service has workers). `loop`:
    the baseline's `--loop` (default asyncio), the service's AI_EVENT_LOOP (default: unset);
    `env`: more environment for the service."""
    cpus = procs.placement.server if procs.placement else ALL_CPUS
    started_at = time.monotonic()
    if kind == "service":
        args = ["-m", "service"] + (["--workers", str(workers)] if workers else [])
        service = service_env(upstream_url, port, procs.tmpdir, loop=loop, shipped_limits=shipped_limits)
        proc, log_path = procs.spawn(
            "service", args, env={**service, **(env or {})}, python=procs.server_python, cpus=cpus
        )
    else:
        args = ["-m", "bench.baseline", "--port", str(port), "--upstream", upstream_url, "--loop", loop or "asyncio"]
        proc, log_path = procs.spawn("baseline", args, python=procs.server_python, cpus=cpus)
    server = Server(kind, proc, f"http://127.0.0.1:{port}", log_path, started_at)
    try:
        await wait_healthy(server, poll=poll)
    except ServerFailed:
        procs.stop(proc)
        raise
    server.healthy_after = time.monotonic() - server.started_at
    return server
