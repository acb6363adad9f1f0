"""Closing our own NATS connections (every normal stop does) is not a warning; a lost one is."""

from __future__ import annotations

import logging

from latchkit import bus
from latchkit.bus import BusSettings


def disconnect_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "nats disconnected" and r.levelno >= logging.WARNING]


async def test_closing_a_connection_logs_no_warning(urls, caplog):
    caplog.set_level(logging.DEBUG, logger="latchkit.bus")
    nc = await bus.connect(BusSettings(url=urls.nats_url, duplicate_window_s=600.0), name="quiet-close")
    await bus.close(nc)
    assert nc.is_closed
    assert not disconnect_warnings(caplog)
    # Still logged, at debug, for whoever looks into a shutdown.
    assert any(r.getMessage() == "nats disconnected" and r.levelno == logging.DEBUG for r in caplog.records)
