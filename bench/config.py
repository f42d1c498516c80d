"""The relay benchmark's sizes and the models its fake upstream plays."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

# The models the fake upstream plays (`bench.upstream`), each configured in the service too.
MAIN_MODEL = "claude-bench"  # --tokens tokens, --token-delay apart: the CPU phase and TTFT levels
ONE_MODEL = "bench-one"  # one token: the cost of starting an answer
PACED_MODEL = "bench-paced"  # 200 tokens 5 ms apart: every token its own upstream chunk
RATE_MODEL = "bench-rate50"  # 200 tokens 20 ms apart (50 tokens/s), stamped: capacity and overload
IDLE_MODEL = "idle"  # opens and stays silent: memory with open streams
PHASES = ("load", "costs", "memory", "start", "capacity", "overload", "resumable")
DEFAULT_PHASES = tuple(p for p in PHASES if p != "resumable")


def default_rig_loop() -> str:
    """The fake upstream's and the load generator's loop: uvloop when installed (the rig is then
    cheaper, so that it is the servers that run out of CPU first), else asyncio's."""
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


@dataclass
class Config:
    """Sizes of a run: the defaults, or `Config.quick()` for a short one."""

    tokens: int = 200
    token_delay: float = 0.0  # seconds between upstream tokens; 0 makes every stream a firehose
    warmup: int = 200
    concurrency: int = 50
    requests: int = 2000
    ttft_levels: list[tuple[int, int]] = field(default_factory=lambda: [(1, 200), (50, 1000), (500, 1000)])
    idle: int = 1000
    workers: int | None = None
    workers_compare: bool = False
    compare_concurrency: int = 100
    compare_requests: int = 1000
    phase_time_limit: float = 90.0
    python: str | None = None  # interpreter of the service and the baseline (None: this one)
    pin: bool = True  # the measured server on a CPU of its own (see `bench.procs.Placement`)
    phases: tuple[str, ...] = DEFAULT_PHASES
    # The cost of starting an answer and of paced tokens ("costs").
    one_token_requests: int = 2000
    paced_tokens: int = 200
    paced_delay: float = 0.005
    paced_concurrency: int = 20  # 4,000 tokens/s: well below saturation, so tokens are not batched
    paced_seconds: float = 20.0
    sync_streams: int = 50
    sync_rounds: int = 20
    # Capacity: concurrent streams at 50 tokens/s until the added latency p99 passes the limit.
    rate_tokens: int = 200
    rate_delay: float = 0.02
    latency_limit_ms: float = 50.0
    capacity_start: int = 50
    capacity_limit: int = 3000
    capacity_steps: int = 10
    capacity_resolution: float = 0.1
    step_ramp: float = 4.0  # seconds over which a step's clients start (one stream's length)
    step_seconds: float = 10.0  # measured seconds of a step, after the ramp
    confirm_failures: bool = True  # a failed level is tried once more before it counts
    # Overload: `overload_factor` x the service's capacity (or `overload_streams`).
    overload_factor: float = 3.0
    overload_streams: int | None = None
    overload_seconds: float = 20.0
    overload_stream_timeout: float = 150.0
    starts: int = 5
    redis_url: str = "redis://127.0.0.1:6379/0"
    service_loop: str | None = None  # AI_EVENT_LOOP for the service; None: as it ships
    rig_loop: str = field(default_factory=default_rig_loop)

    @classmethod
    def quick(cls) -> Config:
        return cls(
            warmup=50,
            requests=300,
            ttft_levels=[(1, 50), (50, 200), (500, 500)],
            compare_requests=300,
            phase_time_limit=30.0,
            one_token_requests=300,
            paced_seconds=4.0,
            sync_rounds=3,
            capacity_steps=4,
            capacity_resolution=0.25,
            step_ramp=2.0,
            step_seconds=3.0,
            confirm_failures=False,
            overload_seconds=4.0,
            overload_stream_timeout=60.0,
            starts=3,
        )

    def upstream_scenarios(self) -> list[str]:
        """`bench.upstream --scenario` arguments for every model but the main one and `idle`."""
        return [
            f"{ONE_MODEL}=1:0",
            f"{PACED_MODEL}={self.paced_tokens}:{self.paced_delay}",
            f"{RATE_MODEL}={self.rate_tokens}:{self.rate_delay}:stamped",
        ]
