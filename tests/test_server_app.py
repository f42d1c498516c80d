"""The application as `python -m service` runs it: `create_app` plus process-wide tuning."""

from __future__ import annotations

import gc

from service.__main__ import server_app
from service.app_keys import MODEL_LOADING
from tests.conftest import parse_events


async def test_loading_the_models_freezes_the_heap_so_full_collections_skip_it(aiohttp_client, make_settings):
    gc.unfreeze()
    try:
        client = await aiohttp_client(server_app(make_settings()))
        await client.app[MODEL_LOADING].wait()
        # Everything alive once the models are loaded (the SDKs' modules and types are most of
        # it) is frozen: a full collection no longer walks it.
        frozen = gc.get_freeze_count()
        assert frozen > 50_000
        gc.collect()
        assert gc.get_freeze_count() == frozen  # frozen objects are left alone
        resp = await client.post("/ai/stream/generate", json={"prompt": "x"})
        assert parse_events(await resp.read())[-1]["type"] == "done"
    finally:
        gc.unfreeze()
