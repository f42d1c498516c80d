"""Soak, short version: a few hundred streams at once with upstream faults and client disconnects
at random, on SQLite and PostgreSQL. The core (load, checks, measurements) is bench/soak.py, whose
`python -m bench.soak` is the long version.

Seeded: the seed is printed; rerun a failure with SOAK_SEED=<seed>. A seed fixes every fault and
every client's behaviour; timing can still change which way a race goes, never what is allowed.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import aiohttp
import pytest

from bench.soak import SERVICE_SETTINGS, Config, Soak, soak
from tests.fake_upstream import FakeUpstream
from tests.storage_fixtures import StoreTarget

SEED = int(os.environ.get("SOAK_SEED", "20261121"))
TIME_BOUND = 15.0  # seconds for the whole soak: streams start for 2 x 4 s, then checks and settling
MIN_STREAMS = 200  # of the main round: fewer means the machine was too slow for a meaningful soak


async def service(make_client: Any, store_target: StoreTarget) -> tuple[str, int]:
    client = await make_client(database_url=store_target.url, **SERVICE_SETTINGS)
    return str(client.make_url("")).rstrip("/"), client.port


async def test_soak_streams_storage_and_resources(
    make_client: Any, fake_upstream: FakeUpstream, store_target: StoreTarget
) -> None:
    print(f"SOAK_SEED={SEED} ({store_target.backend})")
    base, port = await service(make_client, store_target)
    # The brief's disconnects only: after k events, or after the headers before the first event.
    # Cutting the request before its response trips a known bug (see the test below).
    cfg = Config(streams=300, concurrency=150, warmup=150, duration=4.0, seed=SEED,
                 modes={"read": 70, "after_k": 18, "before_first": 12})
    started = time.monotonic()
    run = await soak(base, fake_upstream, port, cfg)
    elapsed = time.monotonic() - started
    summary = run.summary(elapsed)
    print(summary)
    assert not run.violations, f"SOAK_SEED={SEED}\n{summary}"
    assert elapsed < TIME_BOUND, summary
    main_round = sum(run.counts["outcomes"].values()) - cfg.warmup
    assert main_round >= MIN_STREAMS, summary


# A client cut while its turn is being stored must not leave the reserved answer `pending`.
async def test_request_cut_while_its_turn_is_stored_leaves_no_pending_row(
    make_client: Any, fake_upstream: FakeUpstream, store_target: StoreTarget
) -> None:
    print(f"SOAK_SEED={SEED} ({store_target.backend})")
    base, port = await service(make_client, store_target)
    cfg = Config(concurrency=1, duration=5.0, seed=SEED, threads=4, thread_share=1.0, modes={"read": 1})
    run = Soak(base, fake_upstream, port, cfg)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
        # Storing a turn ends just before the headers: cut requests around the usual time to headers,
        # 100 at a time, until one leaves a row pending (or 2,000 did not).
        typical = statistics.median(s.headers_after or 0.0 for s in await run.round(session, "c", 20))
        cfg.modes, cfg.cut_window = {"cut": 1}, (0.5 * typical, 1.1 * typical)
        for n in range(20):
            await run.round(session, f"x{n}-", 100)
            if run.violations:
                break
    print(run.summary(0.0))
    assert not run.violations, "\n".join(run.violations[:10])
