"""Hypothesis strategies for any protobuf message, built from its descriptor.

Hostile values on purpose: huge and unicode-edge strings, negative and
extreme numbers, unknown enum values, empty and deep messages, and
"id-shaped" strings that sometimes look valid.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor as F
from google.protobuf.message import Message
from hypothesis import strategies as st

_EDGE_STRINGS = st.sampled_from(
    [
        "", " ", "\x00", "a" * 70_000, "💥" * 300, "\u202e", "../../etc/passwd", "' OR 1=1 --",
        "00000000-0000-0000-0000-000000000000", "Europe/Madrid", "Mars/Olympus", "-1", "%s%n",
        "latchkey.permissions.>", "spiffe://latchkey/role/admin",
    ]
)
_TEXT = st.one_of(_EDGE_STRINGS, st.text(max_size=80), st.uuids().map(str))
_INTS = {
    F.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    F.TYPE_SINT32: st.integers(-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: st.integers(-(2**31), 2**31 - 1),
    F.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    F.TYPE_SINT64: st.integers(-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: st.integers(-(2**63), 2**63 - 1),
    F.TYPE_UINT32: st.integers(0, 2**32 - 1),
    F.TYPE_FIXED32: st.integers(0, 2**32 - 1),
    F.TYPE_UINT64: st.integers(0, 2**64 - 1),
    F.TYPE_FIXED64: st.integers(0, 2**64 - 1),
}


def _scalar(field):
    if field.type == F.TYPE_STRING:
        return _TEXT
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.floats(allow_nan=True, width=32 if field.type == F.TYPE_FLOAT else 64)
    if field.type == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-5, 1000))
    return _INTS[field.type]


def _timestamp_like(descriptor):
    return descriptor.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration")


def messages(cls: type[Message], depth: int = 0) -> st.SearchStrategy[Message]:
    """Random instances of `cls`; each field is independently present or absent."""
    descriptor = cls.DESCRIPTOR

    @st.composite
    def build(draw):
        msg = cls()
        if _timestamp_like(descriptor):
            msg.seconds = draw(st.integers(-(2**40), 2**40))
            msg.nanos = draw(st.integers(-(10**9), 2 * 10**9))
            return msg
        for field in descriptor.fields:
            if not draw(st.booleans()):
                continue
            is_repeated = field.is_repeated
            if field.type == F.TYPE_MESSAGE:
                if depth > 3:
                    continue
                sub_cls = type(getattr(cls(), field.name)) if not is_repeated else None
                if is_repeated:
                    sub_cls = _message_class(msg, field)
                    for item in draw(st.lists(messages(sub_cls, depth + 1), max_size=3)):
                        getattr(msg, field.name).add().CopyFrom(item)
                else:
                    getattr(msg, field.name).CopyFrom(draw(messages(sub_cls, depth + 1)))
                continue
            values = st.lists(_scalar(field), max_size=4) if is_repeated else _scalar(field)
            value = draw(values)
            try:
                if is_repeated:
                    getattr(msg, field.name).extend(value)
                else:
                    setattr(msg, field.name, value)
            except (ValueError, TypeError):
                continue  # a value protobuf itself refuses to hold (e.g. float range)
        return msg

    return build()


def _message_class(msg: Message, field) -> type[Message]:
    container = getattr(msg, field.name)
    probe = container.add()
    cls = type(probe)
    del container[-1]
    return cls
