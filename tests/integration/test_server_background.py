"""The server runner: a background job that ends while the server runs is logged, never silent,
and health follows the service's own verdict (NOT_SERVING while it says so)."""

from __future__ import annotations

import asyncio
import logging

from grpc_health.v1 import health_pb2, health_pb2_grpc

from latchkit import server
from latchkit.server import ServiceSpec
from tests.integration.conftest import aio_channel, server_settings
from tests.waiting import until


async def test_background_jobs_that_end_are_logged_and_health_follows_the_service(pki, caplog):
    async def fails():
        raise RuntimeError("boom")

    async def leaks_a_cancel():
        raise asyncio.CancelledError  # what a library that swallowed and re-raised oddly leaves

    async def returns():
        return None

    async def runs():
        await asyncio.Event().wait()

    well = [True]
    spec = ServiceSpec(name="bg-test", register=lambda _: [], background=[fails, leaks_a_cancel, returns, runs],
                       healthy=lambda: well[0])
    caplog.set_level(logging.ERROR, logger="latchkit.server")
    running = await server.start(server_settings(pki.tls("access")), spec)
    try:
        async def three_logged():
            return sum("background task" in r.getMessage() for r in caplog.records) >= 3
        await until(three_logged, "the three ended jobs to be logged", limit_s=5)
        messages = sorted(r.getMessage() for r in caplog.records if "background task" in r.getMessage())
        assert messages == ["a background task ended while the server runs",
                            "a background task failed while the server runs",
                            "a background task was cancelled while the server runs"]
        async with aio_channel(running.port, pki.tls("admin")) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def status_is(expected):
                async def check():
                    answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    return answer.status == expected
                return check
            await until(await status_is(health_pb2.HealthCheckResponse.SERVING), "SERVING")
            well[0] = False  # e.g. the access projector is stalled
            await until(await status_is(health_pb2.HealthCheckResponse.NOT_SERVING), "NOT_SERVING", limit_s=5)
            well[0] = True
            await until(await status_is(health_pb2.HealthCheckResponse.SERVING), "SERVING again", limit_s=5)
        caplog.clear()
    finally:
        await running.stop(0.5)
    # Stopping the server cancels the job still running: that is not reported.
    assert not [r for r in caplog.records if "background task" in r.getMessage()]
