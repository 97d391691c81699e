"""The relay's bandwidth limit per lease: a token bucket that slows streams down (nothing is
dropped), measured on the clock."""

from __future__ import annotations

import asyncio
import time

import pytest

from bes.relay import TokenBucket


@pytest.mark.anyio
async def test_the_bucket_lets_one_second_through_then_paces_the_rest() -> None:
    bucket = TokenBucket(rate=1_000_000)
    started = time.monotonic()
    for _ in range(30):
        await bucket.take(100_000)  # 3 MB at 1 MB/s: the first second is the burst
    elapsed = time.monotonic() - started
    assert 1.8 <= elapsed <= 3.5


@pytest.mark.anyio
async def test_streams_of_one_lease_share_its_bucket() -> None:
    bucket = TokenBucket(rate=1_000_000)
    started = time.monotonic()

    async def stream() -> None:
        for _ in range(10):
            await bucket.take(100_000)

    await asyncio.gather(*(stream() for _ in range(3)))  # 3 MB together
    assert 1.8 <= time.monotonic() - started <= 3.5
