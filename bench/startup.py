"""How long a server takes to answer `/health`, and what the SDKs alone weigh in memory.

`measure_start`: `starts` fresh processes one after the other, each timed from just before it is
started until `GET /health` first answers 200 (polled every 10 ms), median, min and max; with the
load average, since the figure's target is for an idle machine. `sdk_only_memory`: the resident
memory of a Python process that imports only aiohttp and the SDKs of the vendors the service is
configured with (and their `messages` / `chat.completions` resource modules, which the service
imports at start), beside the service's resting figure.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from typing import Any

from bench.phases import Bench
from bench.procs import ROOT, SERVICE_MODELS, ServerFailed

# The vendor SDK each endpoint's dialect uses, and the statements that load it as the service does.
SDK_IMPORTS = {
    "anthropic": "import anthropic; anthropic.AsyncAnthropic(api_key='x').messages",
    "openai": "import openai; openai.AsyncOpenAI(api_key='x').chat.completions",
}
_MEASURE = """
import gc, json, sys, time
started = time.perf_counter()
{imports}
took = time.perf_counter() - started
gc.collect()
pages = int(open("/proc/self/statm").read().split()[1])
import resource
print(json.dumps({{"rss_mb": pages * resource.getpagesize() / 1048576, "modules": len(sys.modules), "import_s": took}}))
"""


async def measure_start(bench: Bench, kind: str) -> dict[str, Any]:
    """Seconds from process start to the first 200 from /health, over `starts` fresh processes."""
    times: list[float] = []
    errors: list[str] = []
    load = os.getloadavg()[0]
    for _ in range(bench.cfg.starts):
        try:
            server = await bench.fresh_server(kind, poll=0.01)
        except ServerFailed as exc:
            errors.append(str(exc)[:300])
            continue
        times.append(server.healthy_after)
        bench.procs.stop(server.proc)
    out: dict[str, Any] = {"starts": len(times), "loadavg_before": round(load, 2)}
    if times:
        out.update(
            median_s=round(statistics.median(times), 3), min_s=round(min(times), 3), max_s=round(max(times), 3)
        )
    if errors:
        out["error"] = errors[0]
    return out


def configured_sdks(models: str = SERVICE_MODELS) -> list[str]:
    """The SDKs of the dialects of the configured models (the bench's endpoints are the built-in ones)."""
    return sorted({name.split("/", 1)[0] for name in models.split(",")} & set(SDK_IMPORTS))


def sdk_only_memory(bench: Bench, sdks: list[str] | None = None) -> dict[str, Any]:
    """RSS of a process of the servers' interpreter importing aiohttp and `sdks`, and of one
    importing aiohttp alone."""
    sdks = configured_sdks() if sdks is None else sdks
    python = bench.procs.server_python
    out: dict[str, Any] = {"sdks": sdks}
    for label, imports in (("aiohttp_only", ["import aiohttp"]), ("with_sdks", ["import aiohttp", *map(SDK_IMPORTS.get, sdks)])):
        code = _MEASURE.format(imports="\n".join(i for i in imports if i))
        try:
            done = subprocess.run(
                [python, "-c", code], cwd=ROOT, capture_output=True, timeout=120, check=True, env=_clean_env()
            )
            figures = json.loads(done.stdout.decode().strip().splitlines()[-1])
        except (subprocess.SubprocessError, ValueError, IndexError) as exc:
            out[label] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            continue
        out[label] = {
            "rss_mb": round(figures["rss_mb"], 1),
            "modules": figures["modules"],
            "import_s": round(figures["import_s"], 3),
        }
    return out


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AI_", "ANTHROPIC_", "OPENAI_"))}
