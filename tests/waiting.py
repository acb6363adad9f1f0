"""Bounded waits: poll a condition until it holds, or fail naming what never happened."""

from __future__ import annotations

import asyncio
import time


async def until(predicate, what: str, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
