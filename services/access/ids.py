"""Cheap unique ids for the hot path, in UUID form.

`uuid.uuid4()` costs a system call and a Python-level UUID object per id
(several microseconds on Unlock's path). A `Sequence` draws 74 random bits
once per process and counts in the last 48 bits, laid out as an RFC 9562
version 8 ("custom") UUID: unique as long as two processes do not draw the
same 74 bits (about 2^-37 for a million processes) and a process makes fewer
than 2^48 ids. Ids are not secrets: they are not meant to be unguessable.
"""

from __future__ import annotations

import itertools
import secrets


class Sequence:
    def __init__(self) -> None:
        bits = secrets.randbits(74)
        a, b, c, d = bits >> 42, (bits >> 26) & 0xFFFF, (bits >> 14) & 0xFFF, bits & 0x3FFF
        # 32 random bits, 16, version 8 + 12, variant 0b10 + 14, then the 48-bit counter.
        self._prefix = f"{a:08x}-{b:04x}-8{c:03x}-{0x8000 | d:04x}-"
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):012x}"
