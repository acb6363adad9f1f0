"""Load shapes for permissions writes, counting every outcome by gRPC status.

A write is accepted (its latency kept), refused with RESOURCE_EXHAUSTED (its
latency kept apart: a refusal must come at once), or failed with another code
(counted by name). `closed_loop` keeps N writers busy back to back (a refused
writer first waits the delay the server's RetryInfo asks for); `open_loop`
starts a write every 1/rate s whatever the earlier ones are doing, as clients
that do not wait for each other would.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from bench.harness import percentile
from latchkit.errors import retry_delay_s

T = TypeVar("T")
Write = Callable[[], Awaitable[Any]]


MAX_RETRY_WAIT_S = 1.0


@dataclass
class Outcomes:
    honour_retry_info: bool = False
    """After a refusal, wait the server's RetryInfo delay (at most MAX_RETRY_WAIT_S), as a client would."""
    accepted: list[float] = field(default_factory=list)
    """Seconds, per accepted write."""
    refused: list[float] = field(default_factory=list)
    """Seconds, per RESOURCE_EXHAUSTED answer."""
    errors: Counter = field(default_factory=Counter)
    """Every failure by status code name, refusals included."""
    first_detail: dict[str, str] = field(default_factory=dict)
    """Status code name -> the details of its first failure."""
    succeeded: int = 0
    """Accepted writes, warm-up included (the span a CPU reading around the whole load covers)."""

    async def attempt(self, write: Callable[[], Awaitable[T]], record: bool = True) -> T | None:
        """Run one write; its answer, or None when it failed. `record=False`: a warm-up write."""
        t0 = time.perf_counter()
        try:
            answer = await write()
        except grpc.aio.AioRpcError as exc:
            if record:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self.refused.append(time.perf_counter() - t0)
                self.errors[exc.code().name] += 1
                self.first_detail.setdefault(exc.code().name, exc.details() or "")
            if self.honour_retry_info and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                await asyncio.sleep(min(retry_delay(exc), MAX_RETRY_WAIT_S))
            return None
        self.succeeded += 1
        if record:
            self.accepted.append(time.perf_counter() - t0)
        return answer

    def row(self, seconds: float) -> dict:
        """Accepted writes per second over `seconds`, their p50/p99, and what failed how."""
        lost = self.errors["DEADLINE_EXCEEDED"] + self.errors["UNAVAILABLE"]
        others = {k: v for k, v in sorted(self.errors.items())
                  if k not in ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE")}
        return {"rate_per_s": len(self.accepted) / seconds if seconds else 0.0,
                "p50_ms": percentile(self.accepted, 0.5) * 1e3, "p99_ms": percentile(self.accepted, 0.99) * 1e3,
                "calls": len(self.accepted), "refused": len(self.refused),
                "refused_p99_ms": percentile(self.refused, 0.99) * 1e3 if self.refused else "",
                "timeouts_unavailable": lost,
                "other_errors": " ".join(f"{k}={v}" for k, v in others.items())}


def retry_delay(exc: grpc.aio.AioRpcError) -> float:
    """The google.rpc.RetryInfo delay in the status details; 0 without one."""
    return retry_delay_s(exc) or 0.0


async def closed_loop(writer: Callable[[int, Outcomes, bool], Awaitable[None]], writers: int, seconds: float,
                      warmup: float = 0.5) -> Outcomes:
    """`writers` tasks, each calling `writer(w, outcomes, record)` back to back; recorded after the warm-up."""
    outcomes = Outcomes(honour_retry_info=True)
    measure_from = time.perf_counter() + warmup
    stop_at = measure_from + seconds

    async def run(w: int) -> None:
        while (t0 := time.perf_counter()) < stop_at:
            await writer(w, outcomes, t0 >= measure_from)

    await asyncio.gather(*(run(w) for w in range(writers)))
    return outcomes


async def open_loop(write: Write, rate: float, seconds: float) -> tuple[Outcomes, float]:
    """A write every 1/rate s for `seconds`; then every one of them awaited. (outcomes, wall seconds)."""
    outcomes = Outcomes()
    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(outcomes.attempt(write)))
    await asyncio.gather(*tasks)
    return outcomes, time.perf_counter() - start
