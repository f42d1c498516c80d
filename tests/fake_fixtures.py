"""Pytest fixtures for the fake LLM upstream. Import them into a test module (or a conftest):

    from tests.fake_fixtures import anthropic_client, fake_upstream, openai_client  # noqa: F401
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import openai
import pytest

from tests.fake_upstream import FakeUpstream


@pytest.fixture
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def anthropic_client(fake_upstream: FakeUpstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=fake_upstream.base_url, max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def openai_client(fake_upstream: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(api_key="sk-test", base_url=fake_upstream.openai_base_url, max_retries=0)
    yield client
    await client.close()
