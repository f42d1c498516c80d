"""`--workers N`: N processes serving one port (SO_REUSEPORT), watched by this one.

The supervisor only starts, restarts and stops workers; each worker is a whole service
(`python -m service --worker`). Metrics are summed across workers through files in
`PROMETHEUS_MULTIPROC_DIR`, which the supervisor creates when the operator has not.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog
from prometheus_client import multiprocess

log = structlog.get_logger("ai_stream")

# A worker that dies sooner than this after starting is failing to start, not crashing.
_MIN_UPTIME = 2.0
_MAX_QUICK_DEATHS = 5


class Supervisor:
    def __init__(self, workers: int, stop_timeout: float) -> None:
        self.workers = workers
        self.stop_timeout = stop_timeout
        self.procs: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self.stopping = False
        self.quick_deaths = 0
        self.metrics_dir, self.own_metrics_dir = _metrics_dir()

    def _spawn(self) -> None:
        # AI_WORKERS: each worker knows it is one of several (a resume of an answer another
        # worker holds is then answered 503, see service/resume_routes.py).
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir), "AI_WORKERS": str(self.workers)}
        proc = subprocess.Popen([sys.executable, "-m", "service", "--worker"], env=env)
        self.procs[proc.pid] = (proc, time.monotonic())

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info("supervisor_started", workers=self.workers, pid=os.getpid())
        for _ in range(self.workers):
            self._spawn()
        status = 0
        while not self.stopping:
            time.sleep(0.2)
            for pid, (proc, started) in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                del self.procs[pid]
                multiprocess.mark_process_dead(pid, str(self.metrics_dir))
                quick = time.monotonic() - started < _MIN_UPTIME
                self.quick_deaths = self.quick_deaths + 1 if quick else 0
                log.error("worker_exited", pid=pid, code=code, restarting=self.quick_deaths < _MAX_QUICK_DEATHS)
                if self.quick_deaths >= _MAX_QUICK_DEATHS:
                    self.stopping, status = True, 1
                    break
                self._spawn()
        return self._stop() or status

    def _stop(self) -> int:
        """SIGTERM every worker (each drains its streams), wait, then kill what is left."""
        for proc, _ in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        status = 0
        for pid, (proc, _) in self.procs.items():
            try:
                code = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            status = status or (code != 0)
            multiprocess.mark_process_dead(pid, str(self.metrics_dir))
        if self.own_metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        log.info("supervisor_stopped", status=int(status))
        return int(status)


def _metrics_dir() -> tuple[Path, bool]:
    """The operator's PROMETHEUS_MULTIPROC_DIR (emptied: old files would add stale counts), or a new one."""
    if configured := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return path, False
    return Path(tempfile.mkdtemp(prefix="ai-stream-metrics-")), True
