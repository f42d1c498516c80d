"""Circuits shared across replicas: a model whose circuit opens on one replica is skipped by all.

Nothing here is on a request's path. A circuit that opens or closes in this process (only its
model's own failures and successes move it, as without Redis) is told to the others in the
background: a key `circuit:<model>` that lives as long as the cool-down (deleted when the
circuit closes), and a message on the channel `circuits`. Every replica applies the messages of
the others to its own circuits as they arrive; one that starts, or that gets Redis back after an
outage, subscribes first and then reads the keys, so it misses nothing that is still open.

When the cool-down ends every replica may probe the model once (half open); the first probe to
succeed closes the circuit everywhere, a failed one opens it everywhere again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import structlog
from aiohttp import web

from service.app_keys import CHAIN, REDIS

if TYPE_CHECKING:
    from providers.circuit import Circuit
    from service.redis_link import RedisLink

log = structlog.get_logger("ai_stream")

_POLL_SECONDS = 1.0  # how long a wait for the next message lasts before the link is looked at again
_MAX_COOLDOWN_MS = 86_400_000  # a message asking for more is not one of ours


class SharedCircuits:
    """Tells the other replicas of this process's circuit changes and applies theirs."""

    def __init__(self, link: RedisLink, circuits: Mapping[str, Circuit]) -> None:
        assert link.client is not None, "only for a configured link"
        self.link = link
        self.circuits = circuits
        self.channel = link.key("circuits")
        self.origin = uuid.uuid4().hex  # this process: its own messages come back to it
        self._tasks: set[asyncio.Task[None]] = set()
        # Set at shutdown: `follow` ends even should the client swallow its cancellation (a read
        # whose own timeout fires as the task is cancelled returns None instead of raising).
        self.stopping = False
        for name, circuit in circuits.items():
            circuit.on_change = functools.partial(self._changed, name)

    def _key(self, model: str) -> str:
        return self.link.key("circuit", model)

    def _changed(self, model: str, state: Literal["open", "closed"], seconds: float) -> None:
        """A circuit of this process opened or closed: tell the others, in the background."""
        if not self.link.up:
            return  # while Redis is down each replica keeps its own circuits
        task = asyncio.create_task(self._publish(model, state, seconds), name="circuit-publish")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, model: str, state: Literal["open", "closed"], seconds: float) -> None:
        client = self.link.client
        assert client is not None
        cooldown_ms = max(int(seconds * 1000), 1)
        message = json.dumps({"origin": self.origin, "model": model, "state": state, "cooldown_ms": cooldown_ms})
        try:
            async with asyncio.timeout(self.link.command_timeout):
                pipe = client.pipeline(transaction=False)
                if state == "open":
                    pipe.set(self._key(model), "open", px=cooldown_ms)
                else:
                    pipe.delete(self._key(model))
                pipe.publish(self.channel, message)
                await pipe.execute()
        except Exception as exc:  # the others then decide on their own, as without Redis
            self.link.failed("circuit_publish", exc)

    async def catch_up(self) -> None:
        """Open here every circuit that is open on Redis, for what remains of its cool-down."""
        client = self.link.client
        assert client is not None
        names = list(self.circuits)
        async with asyncio.timeout(self.link.command_timeout):
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.pttl(self._key(name))
            remaining = await pipe.execute()
        for name, ms in zip(names, remaining, strict=True):
            if isinstance(ms, int) and ms > 0:
                self.circuits[name].open_for(ms / 1000)

    def apply(self, data: bytes | str) -> None:
        """One message of another replica; anything that is not one is ignored."""
        try:
            message: Any = json.loads(data)
            model, state, cooldown_ms = message["model"], message["state"], message["cooldown_ms"]
            origin = message["origin"]
        except (ValueError, TypeError, KeyError):
            return
        circuit = self.circuits.get(model) if isinstance(model, str) else None
        if circuit is None or origin == self.origin:
            return
        if state == "open" and isinstance(cooldown_ms, int) and 0 < cooldown_ms <= _MAX_COOLDOWN_MS:
            circuit.open_for(cooldown_ms / 1000)
        elif state == "closed":
            circuit.close()

    async def follow(self) -> None:
        """Background task: subscribed while Redis is up, catching up after every (re)subscription."""
        client = self.link.client
        assert client is not None
        while not self.stopping:
            if not self.link.up:
                await asyncio.sleep(self.link.check_interval)
                continue
            pubsub = client.pubsub()
            try:
                async with asyncio.timeout(self.link.command_timeout):
                    await pubsub.subscribe(self.channel)
                await self.catch_up()
                while self.link.up and not self.stopping:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL_SECONDS)
                    if message is not None and message.get("type") == "message":
                        self.apply(message["data"])
            except Exception as exc:
                self.link.failed("circuit_sync", exc)
                await asyncio.sleep(self.link.check_interval)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def shared_circuits_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after the models): with REDIS_URL, the chain's circuits are shared; a
    replica starting reads what is open before it serves."""
    link = app[REDIS]
    if not link.configured:
        yield
        return
    shared = SharedCircuits(link, app[CHAIN].circuits)
    if link.up:
        try:
            await shared.catch_up()
        except Exception as exc:
            link.failed("circuit_sync", exc)
    task = asyncio.create_task(shared.follow(), name="redis-circuits")
    yield
    shared.stopping = True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await shared.close()
