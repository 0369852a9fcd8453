"""Hypothesis strategies for any protobuf message, from its descriptor, and for mutated wire bytes.

Every field is drawn from its type: integers at and beyond their edges, floats
with NaN and infinities, text of any kind, enums with numbers no one named,
nested messages, repeated fields, oneofs. The well-known types get their own:
Timestamp and Duration with seconds and nanos out of range and signs that
disagree, FieldMask with real paths, camelCase ones and junk. Strings are
mixed with values that reach deeper than random text does (ids that exist,
backend names, rate limits), given per field name in `hints`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

Hints = Mapping[str, st.SearchStrategy[str]]

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT32 = (0, 2**32 - 1)
_UINT64 = (0, 2**64 - 1)
_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: _INT32,
    FieldDescriptor.CPPTYPE_INT64: _INT64,
    FieldDescriptor.CPPTYPE_UINT32: _UINT32,
    FieldDescriptor.CPPTYPE_UINT64: _UINT64,
}

# Protobuf's own limits for Timestamp and Duration, and their neighbours just outside.
_TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)
_DURATION_SECONDS = 315_576_000_000
_NANOS = 1_000_000_000


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    """Any integer in range, with the edges and small values drawn often."""
    edges = sorted(n for n in {low, low + 1, -1, 0, 1, 2, 10**6, high - 1, high} if low <= n <= high)
    return st.one_of(
        st.sampled_from(edges), st.integers(-1000, 1000).filter(lambda n: low <= n <= high), st.integers(low, high)
    )


def _floats(width: int) -> st.SearchStrategy[float]:
    return st.one_of(st.floats(width=width), st.sampled_from([0.0, -0.0, 1e308 if width == 64 else 3.4e38]))  # type: ignore[arg-type]


TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=100),
    st.sampled_from(["", " ", "\x00", "chest pain", "a" * 2_000, "\u202eevil", "😀" * 10, "%s%n", "../../etc"]),
)


def _timestamp_seconds() -> st.SearchStrategy[int]:
    low, high = _TIMESTAMP_SECONDS
    return st.one_of(
        st.sampled_from([low - 1, low, 0, 1_700_000_000, high, high + 1, *_INT64]),
        st.integers(*_INT64),
        st.integers(low, high),
    )


def _nanos() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([-_NANOS, -1, 0, 1, _NANOS - 1, _NANOS, *_INT32]), st.integers(*_INT32))


def _duration_seconds() -> st.SearchStrategy[int]:
    edge = _DURATION_SECONDS
    return st.one_of(
        st.sampled_from([-edge - 1, -edge, -1, 0, 1, 86_400, edge, edge + 1, 10**12, 2**62, *_INT64]),
        st.integers(*_INT64),
        st.integers(-(10**9), 10**9),
    )


def field_paths(descriptor: Descriptor, prefix: str = "", depth: int = 0) -> list[str]:
    """Every path a FieldMask may name in `descriptor`, nested messages included."""
    paths = []
    for field in descriptor.fields:
        path = prefix + field.name
        paths.append(path)
        if field.message_type is not None and not field.is_repeated and depth < 3:
            paths += field_paths(field.message_type, path + ".", depth + 1)
    return paths


class Generator:
    """Strategies for messages and their fields, built once per type (building them is what costs)."""

    def __init__(self, hints: Hints, mask_paths: Sequence[str]) -> None:
        self._hints = hints
        self._mask_paths = mask_paths
        self._messages: dict[tuple[str, int], st.SearchStrategy[Message]] = {}
        self._fields: dict[tuple[str, int], st.SearchStrategy[Any]] = {}

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        """Any message of `descriptor`'s type: each field set or not, any oneof member or none."""
        key = (descriptor.full_name, depth)
        if key not in self._messages:
            self._messages[key] = self._build(descriptor, depth)
        return self._messages[key]

    def _build(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        make = message_factory.GetMessageClass(descriptor)
        if descriptor.full_name == "google.protobuf.Timestamp":
            return st.builds(make, seconds=_timestamp_seconds(), nanos=_nanos())
        if descriptor.full_name == "google.protobuf.Duration":
            return st.builds(make, seconds=_duration_seconds(), nanos=_nanos())
        if descriptor.full_name == "google.protobuf.FieldMask":
            camel = [p.replace("_r", "R").replace("_p", "P").replace("_b", "B") for p in self._mask_paths]
            path = st.one_of(st.sampled_from([*self._mask_paths, *camel, "", "*", ".", "a..b"]), TEXT)
            return st.builds(make, paths=st.lists(path, max_size=4))
        choices = [st.sampled_from([None, *oneof.fields]) for oneof in descriptor.oneofs]
        plain = [field for field in descriptor.fields if field.containing_oneof is None]

        @st.composite
        def draw_message(draw: st.DrawFn) -> Message:
            message: Message = make()
            for choice in choices:
                chosen = draw(choice)
                if chosen is not None:
                    self.set(message, chosen, draw, depth)
            for field in plain:
                if draw(st.booleans()):
                    self.set(message, field, draw, depth)
            return message

        return draw_message()

    def set(self, message: Message, field: FieldDescriptor, draw: st.DrawFn, depth: int) -> None:
        """Sets `field` of `message` to a drawn value (nested messages only down to a depth of four)."""
        if field.message_type is not None and depth >= 4:
            return
        value = draw(self._field(field, depth))
        if field.is_repeated and field.message_type is not None:
            for item in value:
                getattr(message, field.name).add().CopyFrom(item)
        elif field.is_repeated:
            getattr(message, field.name).extend(value)
        elif field.message_type is not None:
            getattr(message, field.name).CopyFrom(value)
        else:
            setattr(message, field.name, value)

    def _field(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        key = (field.full_name, depth)
        if key not in self._fields:
            one: st.SearchStrategy[Any]
            if field.message_type is not None:
                one = self.message(field.message_type, depth + 1)
            else:
                one = _scalar(field, self._hints)
            self._fields[key] = st.lists(one, max_size=3) if field.is_repeated else one
        return self._fields[key]


def _scalar(field: FieldDescriptor, hints: Hints) -> st.SearchStrategy[object]:
    kind = field.cpp_type
    if kind in _RANGES:
        return integers(*_RANGES[kind])
    if kind == FieldDescriptor.CPPTYPE_ENUM:
        assert field.enum_type is not None
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), integers(*_INT32))  # proto3 enums are open
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.CPPTYPE_DOUBLE:
        return _floats(64)
    if kind == FieldDescriptor.CPPTYPE_FLOAT:
        return _floats(32)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    hint = hints.get(field.name)
    return st.one_of(hint, TEXT) if hint is not None else TEXT


@st.composite
def mutated(draw: st.DrawFn, serialized: st.SearchStrategy[bytes]) -> bytes:
    """Wire bytes a parser must survive: a real message cut, flipped, spliced, padded, or plain noise."""
    data = bytearray(draw(st.one_of(serialized, st.binary(max_size=200))))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "field", "deep"]))
        at = draw(st.integers(0, len(data)))
        if operation == "flip" and data:
            at = min(at, len(data) - 1)
            data[at] ^= draw(st.integers(1, 255))
        elif operation == "cut":
            del data[at:]
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "repeat":
            data += data[: draw(st.integers(0, 64))]
        elif operation == "field":
            # A tag of any number and wire type, then a length or value that may lie.
            tag = draw(st.integers(0, 2**35)) << 3 | draw(st.integers(0, 7))
            data[at:at] = _varint(tag) + _varint(draw(st.sampled_from([0, 1, 127, 2**31, 2**64 - 1])))
        elif operation == "deep":
            # Nested length-delimited field 1 as deep as the parser allows, and deeper.
            levels = draw(st.sampled_from([50, 101, 200]))
            nested = b""
            for _ in range(levels):
                nested = b"\x0a" + _varint(len(nested)) + nested
            data[at:at] = nested
    return bytes(data)


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= 2**64 - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
