"""Murmur3 tokens of partition keys, exactly as Cassandra's ``Murmur3Partitioner.getToken``.

Keys arrive in canonical Arrow form (``reconcile.canonical``) and are serialized like the
server does: one column as its CQL value bytes, several as ``len16 | bytes | 0x00`` each.
The hash is MurmurHash3 x64-128 with Cassandra's signed tail bytes; the token is its first
64 bits, ``Long.MIN_VALUE`` becoming ``Long.MAX_VALUE`` and an empty key ``Long.MIN_VALUE``.
``partition_tokens`` runs vectorized (numpy uint64 over keys grouped by length);
``reference_partition_tokens`` is the plain per-row path through the driver's C hash.
Frozen sets and maps are serialized in the server's comparator order (UUIDs by version,
then time); every key type is checked against Cassandra 5's ``token()`` in the integration
tests. (ScyllaDB hashes an empty key instead of using the minimum token; neither server
stores an empty partition key in a base table, so the difference never reaches a diff.)
"""

from __future__ import annotations

import ipaddress
import json
import math
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from cassandra.murmur3 import murmur3 as _driver_murmur3

from cdc_pipelines.cqltypes import CqlType
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.ring.slices import MAX_TOKEN, MIN_TOKEN
from cdc_pipelines.rows.canonical import (
    CanonicalSchema,
    date_days,
    string_buffers,
    time_nanos,
    timestamp_micros,
)

UserTypes = Mapping[str, Sequence[tuple[str, CqlType]]]
_WordLoader = Callable[[int], npt.NDArray[np.uint64]]
"""Returns word i (bytes 8i..8i+7, little-endian, zero beyond the key) of every key, fresh."""
KeyColumns = Sequence[tuple[str, CqlType]]

_U64 = np.uint64
_C1 = _U64(0x87C37B91114253D5)
_C2 = _U64(0x4CF5AD432745937F)
_FMIX1 = _U64(0xFF51AFD7ED558CCD)
_FMIX2 = _U64(0xC4CEB9FE1A85EC53)
_H1_ADD = _U64(0x52DCE729)
_H2_ADD = _U64(0x38495AB5)
_FIVE = _U64(5)
_BYTE_LOW_BITS = _U64(0x0101010101010101)
_BYTE_MAX = _U64(0xFF)
BLOCK_BYTES = 16
WORD_BYTES = 8
HASH_CHUNK_ROWS = 1 << 18
"""Rows hashed per numpy pass: bounds the temporary arrays to a few MB per word."""
MIN_VECTOR_GROUP = 48
"""Below this many keys of one length, the per-row C hash beats numpy's per-call overhead."""
MAX_MASKED_LENGTHS = 32
"""Up to this many distinct key lengths, grouping by masks beats sorting the lengths."""

MAX_COMPONENT_BYTES = 0xFFFF
"""A composite-key component's length is written in two bytes."""
DATE_EPOCH_OFFSET = 2**31
"""CQL ``date`` is an unsigned 32-bit day count with the Unix epoch at 2^31."""
MICROS_PER_MILLI = 1_000
_TIMEUUID_LSB_SIGN_FLIP = 0x0080808080808080
UUID_BYTES = 16
_FLOAT_WORDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_CONTAINER_TYPES = frozenset({"list", "set", "map", "tuple", "udt"})
# Key types whose canonical JSON element is a string, so a map key's text is the element itself.
_STRING_ELEMENT_TYPES = frozenset(
    {"text", "ascii", "inet", "uuid", "timeuuid", "blob", "timestamp", "date", "time", "decimal"}
)
_FIXED_WIDTHS = {
    "tinyint": 1,
    "smallint": 2,
    "int": 4,
    "bigint": 8,
    "counter": 8,
    "float": 4,
    "double": 8,
    "boolean": 1,
    "uuid": 16,
    "timeuuid": 16,
    "timestamp": 8,
    "date": 4,
    "time": 8,
}
_BYTE_TYPES = frozenset({"text", "ascii", "blob"})
_PER_ROW_TYPES = frozenset({"varint", "decimal", "inet", "list", "set", "map", "tuple", "udt"})


# --------------------------------------------------------------------------- Murmur3


def murmur3_token(key: bytes) -> int:
    """Cassandra's token of serialized key bytes (the per-row reference)."""
    if not key:
        return MIN_TOKEN
    token = int(_driver_murmur3(key))
    return MAX_TOKEN if token == MIN_TOKEN else token


def _rotl(x: npt.NDArray[np.uint64], r: int, tmp: npt.NDArray[np.uint64]) -> None:
    np.right_shift(x, _U64(64 - r), out=tmp)
    np.left_shift(x, _U64(r), out=x)
    np.bitwise_or(x, tmp, out=x)


def _fmix(k: npt.NDArray[np.uint64], tmp: npt.NDArray[np.uint64]) -> None:
    for multiplier in (_FMIX1, _FMIX2):
        np.right_shift(k, _U64(33), out=tmp)
        k ^= tmp
        k *= multiplier
    np.right_shift(k, _U64(33), out=tmp)
    k ^= tmp


def _sign_extend_tail(word: npt.NDArray[np.uint64], tmp: npt.NDArray[np.uint64]) -> None:
    # Cassandra reads tail bytes as signed Java bytes: a byte >= 0x80 also flips every bit
    # above it. The XOR of those masks sets byte q to 0xFF iff an odd number of bytes
    # below q have their top bit set: a prefix parity, computed with three shifts.
    np.right_shift(word, _U64(7), out=tmp)
    tmp &= _BYTE_LOW_BITS
    for shift in (8, 16, 32):
        tmp ^= tmp << _U64(shift)
    tmp <<= _U64(8)
    tmp *= _BYTE_MAX
    word ^= tmp


def _key_words(matrix: npt.NDArray[np.uint8]) -> _WordLoader:
    """Word loader over equal-length keys: little-endian words, zero padded, one row per word."""
    rows, length = matrix.shape
    words = (length + BLOCK_BYTES - 1) // BLOCK_BYTES * 2 or 2
    padded = np.zeros((rows, words * WORD_BYTES), dtype=np.uint8)
    padded[:, :length] = matrix
    by_word = np.ascontiguousarray(padded.view("<u8").T)
    return lambda word: by_word[word]


def _offset_words(
    view: npt.NDArray[np.uint64], starts: npt.NDArray[np.int64], length: int
) -> _WordLoader:
    """Word loader over keys at arbitrary byte offsets of one buffer (see ``_unaligned_words``)."""

    def load(word: int) -> npt.NDArray[np.uint64]:
        values = view[starts + word * WORD_BYTES]
        remaining = length - word * WORD_BYTES
        if remaining < WORD_BYTES:
            values &= _U64((1 << (8 * max(remaining, 0))) - 1)
        return values

    return load


def _unaligned_words(data: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
    """A view whose element i is the little-endian 64-bit word at byte i (unaligned loads)."""
    padded = np.concatenate([data, np.zeros(BLOCK_BYTES, dtype=np.uint8)])
    return np.ndarray(
        shape=(len(padded) - WORD_BYTES + 1,), dtype="<u8", buffer=padded, strides=(1,)
    )


def _murmur3_words(load: _WordLoader, rows: int, length: int) -> npt.NDArray[np.int64]:
    h1 = np.zeros(rows, dtype=np.uint64)
    h2 = np.zeros(rows, dtype=np.uint64)
    tmp = np.empty(rows, dtype=np.uint64)
    blocks = length // BLOCK_BYTES
    for block in range(blocks):
        k1, k2 = load(2 * block), load(2 * block + 1)
        k1 *= _C1
        _rotl(k1, 31, tmp)
        k1 *= _C2
        h1 ^= k1
        _rotl(h1, 27, tmp)
        h1 += h2
        h1 *= _FIVE
        h1 += _H1_ADD
        k2 *= _C2
        _rotl(k2, 33, tmp)
        k2 *= _C1
        h2 ^= k2
        _rotl(h2, 31, tmp)
        h2 += h1
        h2 *= _FIVE
        h2 += _H2_ADD
    tail = length % BLOCK_BYTES
    if tail:
        if tail > WORD_BYTES:
            k2 = load(2 * blocks + 1)
            _sign_extend_tail(k2, tmp)
            k2 *= _C2
            _rotl(k2, 33, tmp)
            k2 *= _C1
            h2 ^= k2
        k1 = load(2 * blocks)
        _sign_extend_tail(k1, tmp)
        k1 *= _C1
        _rotl(k1, 31, tmp)
        k1 *= _C2
        h1 ^= k1
    h1 ^= _U64(length)
    h2 ^= _U64(length)
    h1 += h2
    h2 += h1
    _fmix(h1, tmp)
    _fmix(h2, tmp)
    h1 += h2
    tokens = h1.view(np.int64)
    tokens[tokens == MIN_TOKEN] = MAX_TOKEN
    if length == 0:
        tokens[:] = MIN_TOKEN
    return tokens


def _murmur3_block(matrix: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    rows, length = matrix.shape
    return _murmur3_words(_key_words(matrix), rows, length)


def murmur3_tokens_fixed(matrix: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """Tokens of equal-length keys, one key per row of a ``(rows, length)`` uint8 matrix."""
    rows = matrix.shape[0]
    out = np.empty(rows, dtype=np.int64)
    for start in range(0, rows, HASH_CHUNK_ROWS):
        out[start : start + HASH_CHUNK_ROWS] = _murmur3_block(
            matrix[start : start + HASH_CHUNK_ROWS]
        )
    return out


@dataclass(frozen=True)
class SerializedKeys:
    """Serialized partition keys of many rows: ``data[offsets[i]:offsets[i+1]]`` is row i."""

    data: npt.NDArray[np.uint8]
    offsets: npt.NDArray[np.int64]

    @property
    def lengths(self) -> npt.NDArray[np.int64]:
        return np.diff(self.offsets)

    def key(self, row: int) -> bytes:
        return self.data[self.offsets[row] : self.offsets[row + 1]].tobytes()


def murmur3_tokens(keys: SerializedKeys) -> npt.NDArray[np.int64]:
    """Tokens of variable-length keys: numpy per group of equal length, C per row for rare lengths."""
    lengths = keys.lengths
    count = len(lengths)
    out = np.empty(count, dtype=np.int64)
    if count == 0:
        return out
    starts = keys.offsets[:-1]
    view = _unaligned_words(keys.data)
    flat: bytes | None = None
    for length, group in _length_groups(lengths):
        if len(group) >= MIN_VECTOR_GROUP or length == 0:
            for chunk in range(0, len(group), HASH_CHUNK_ROWS):
                rows = group[chunk : chunk + HASH_CHUNK_ROWS]
                out[rows] = _murmur3_words(
                    _offset_words(view, starts[rows], length), len(rows), length
                )
        else:
            flat = keys.data.tobytes() if flat is None else flat
            for row in group.tolist():
                out[row] = murmur3_token(flat[starts[row] : starts[row] + length])
    return out


def _length_groups(lengths: npt.NDArray[np.int64]) -> list[tuple[int, npt.NDArray[np.int64]]]:
    """Row indices per key length: one mask per length when few, else one stable sort."""
    present = np.flatnonzero(np.bincount(lengths))
    if len(present) <= MAX_MASKED_LENGTHS:
        return [(int(length), np.flatnonzero(lengths == length)) for length in present]
    order = np.argsort(lengths, kind="stable")
    cuts = np.flatnonzero(np.diff(lengths[order])) + 1
    return [(int(lengths[group[0]]), group) for group in np.split(order, cuts)]


# --------------------------------------------------------------------------- per-value serialization

SortKey = Any
"""A Python value ordering serialized elements like Cassandra's comparator for their type."""


def _varint_bytes(number: int) -> bytes:
    # Java BigInteger.toByteArray: minimal two's complement, big-endian, at least one byte.
    size = (number if number >= 0 else ~number).bit_length() // 8 + 1
    return number.to_bytes(size, "big", signed=True)


def _decimal_bytes(text: str) -> bytes:
    number = Decimal(text)
    sign, digits, exponent = number.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"decimal {text!r} is not finite")
    unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    return struct.pack(">i", -exponent) + _varint_bytes(unscaled)


def _float_value(value: object) -> float:
    if isinstance(value, str):
        return _FLOAT_WORDS[value] if value in _FLOAT_WORDS else float(value)
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{value!r} is not a number")


def _uuid_bytes(value: object) -> bytes:
    if isinstance(value, bytes) and len(value) == UUID_BYTES:
        return value
    if isinstance(value, str):
        return uuid.UUID(value).bytes
    raise TypeError(f"{value!r} is not a UUID")


def _uuid_sort_key(raw: bytes) -> SortKey:
    msb, lsb = struct.unpack(">QQ", raw)
    version = (msb >> 12) & 0xF
    if version == 1:
        return (version, _timestamp_order(msb), lsb)
    return (version, msb, lsb)


def _timestamp_order(msb: int) -> int:
    # time_hi | time_mid | time_low: the 60-bit v1 timestamp in comparable order.
    return ((msb & 0x0FFF) << 48) | (((msb >> 16) & 0xFFFF) << 32) | (msb >> 32)


def _timeuuid_sort_key(raw: bytes) -> SortKey:
    msb, lsb = struct.unpack(">QQ", raw)
    flipped = lsb ^ _TIMEUUID_LSB_SIGN_FLIP
    signed_lsb = flipped - (1 << 64) if flipped >= 1 << 63 else flipped
    return (_timestamp_order(msb), signed_lsb)


def _float_sort_key(number: float) -> SortKey:
    # Java's Float.compare/Double.compare: -0.0 < 0.0 and NaN above everything.
    if math.isnan(number):
        return (1, 0.0, True)
    return (0, number, math.copysign(1.0, number) > 0)


def _scalar(value: object, cql_type: CqlType) -> tuple[bytes, SortKey]:
    name = cql_type.name
    if name in ("tinyint", "smallint", "int", "bigint", "counter"):
        number = int(value)  # type: ignore[call-overload]
        return number.to_bytes(_FIXED_WIDTHS[name], "big", signed=True), number
    if name == "varint":
        number = int(value)  # type: ignore[call-overload]
        return _varint_bytes(number), number
    if name == "decimal":
        text = str(value)
        return _decimal_bytes(text), Decimal(text)
    if name in ("float", "double"):
        number = _float_value(value)
        return struct.pack(">f" if name == "float" else ">d", number), _float_sort_key(number)
    if name == "boolean":
        flag = bool(value)
        return bytes([flag]), flag
    if name in ("text", "ascii"):
        if not isinstance(value, str):
            raise TypeError(f"{value!r} is not text")
        raw = value.encode("utf-8")
        return raw, raw
    if name == "blob":
        if isinstance(value, str):
            raw = bytes.fromhex(value[2:])
        elif isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
        else:
            raise TypeError(f"{value!r} is not binary")
        return raw, raw
    if name in ("uuid", "timeuuid"):
        raw = _uuid_bytes(value)
        return raw, (_uuid_sort_key(raw) if name == "uuid" else _timeuuid_sort_key(raw))
    if name == "timestamp":
        micros = value if isinstance(value, int) else timestamp_micros(value)
        millis = micros // MICROS_PER_MILLI
        return struct.pack(">q", millis), millis
    if name == "date":
        days = value if isinstance(value, int) else date_days(value)
        return struct.pack(">I", days + DATE_EPOCH_OFFSET), days
    if name == "time":
        nanos = value if isinstance(value, int) else time_nanos(value)
        return struct.pack(">q", nanos), nanos
    if name == "inet":
        raw = ipaddress.ip_address(str(value)).packed
        return raw, raw
    if name == "duration":
        raise ReconcileError(
            "duration cannot be part of a partition key (Cassandra rejects it in a PRIMARY "
            "KEY); fix the declaration's partition_key"
        )
    raise ReconcileError(f"CQL type {cql_type} cannot be part of a partition key")


def _cell(raw: bytes | None) -> bytes:
    return struct.pack(">i", -1) if raw is None else struct.pack(">i", len(raw)) + raw


def serialize_value(
    value: object, cql_type: CqlType, user_types: UserTypes
) -> tuple[bytes, SortKey]:
    """CQL binary form of a canonical value (native protocol v3+) and its comparator sort key.

    Accepts canonical Arrow values as Python (uuid as 16 bytes, timestamp as int µs, date
    as int days, time as int ns) and canonical JSON elements (text forms).
    """
    name = cql_type.name
    if name not in _CONTAINER_TYPES:
        return _scalar(value, cql_type)
    if isinstance(value, str):
        value = json.loads(value, parse_float=Decimal)
    if name in ("list", "set"):
        items = [serialize_value(v, cql_type.params[0], user_types) for v in _as_list(value)]
        if name == "set":
            # Cassandra stores a frozen set in its element comparator's order, without duplicates.
            items = sorted({raw: key for raw, key in items}.items(), key=lambda item: item[1])
        raw = struct.pack(">i", len(items)) + b"".join(_cell(r) for r, _ in items)
        return raw, tuple(key for _, key in items)
    if name == "map":
        key_type, value_type = cql_type.params
        if not isinstance(value, Mapping):
            raise TypeError(f"{value!r} is not a map")
        entries = []
        for key_text, item in value.items():
            key_value = (
                key_text
                if key_type.name in _STRING_ELEMENT_TYPES
                else json.loads(key_text, parse_float=Decimal)
            )
            key_raw, key_sort = serialize_value(key_value, key_type, user_types)
            value_raw, value_sort = serialize_value(item, value_type, user_types)
            entries.append((key_sort, key_raw, value_raw, value_sort))
        entries.sort(key=lambda entry: entry[0])
        raw = struct.pack(">i", len(entries)) + b"".join(
            _cell(k) + _cell(v) for _, k, v, _ in entries
        )
        return raw, tuple((k, v) for k, _, _, v in entries)
    fields = _fields(cql_type, user_types)
    cells = [
        None if v is None else serialize_value(v, t, user_types)
        for v, (_, t) in zip(_components(value, fields), fields, strict=True)
    ]
    raw = b"".join(_cell(None if c is None else c[0]) for c in cells)
    return raw, tuple((0,) if c is None else (1, c[1]) for c in cells)


def _as_list(value: object) -> list[object]:
    if isinstance(value, list | tuple):
        return list(value)
    raise TypeError(f"{value!r} is not a list")


def _fields(cql_type: CqlType, user_types: UserTypes) -> list[tuple[str | None, CqlType]]:
    """Components of a tuple (unnamed) or a UDT (named, in declared order)."""
    if cql_type.name == "tuple":
        return [(None, t) for t in cql_type.params]
    fields = user_types.get(cql_type.udt_name or "")
    if fields is None:
        raise ReconcileError(
            f"user type {cql_type.udt_name!r} is not declared; add it under user_types"
        )
    return [(name, t) for name, t in fields]


def _components(value: object, fields: list[tuple[str | None, CqlType]]) -> list[object]:
    if isinstance(value, Mapping):
        return [value.get(name) for name, _ in fields]
    items = _as_list(value)
    if len(items) > len(fields):
        raise TypeError(f"{value!r} has more than the {len(fields)} declared components")
    return items + [None] * (len(fields) - len(items))


# --------------------------------------------------------------------------- keys of a table


def _key_array(table: pa.Table, name: str) -> pa.Array:
    if name not in table.column_names:
        raise ReconcileError(
            f"partition key column {name!r} is missing from the Arrow table; read every key column"
        )
    values = table.column(name).combine_chunks()
    if values.null_count:
        raise ReconcileError(
            f"partition key column {name!r} is NULL in {values.null_count} row(s); a partition "
            f"key is never NULL in Cassandra, so the target holds rows the source cannot have"
        )
    return values


def _fixed_matrix(values: pa.Array, cql_type: CqlType) -> npt.NDArray[np.uint8]:
    name = cql_type.name
    width = _FIXED_WIDTHS[name]
    rows = len(values)
    if name in ("uuid", "timeuuid"):
        buffer = np.frombuffer(values.buffers()[1], dtype=np.uint8)
        return buffer[values.offset * width : (values.offset + rows) * width].reshape(rows, width)
    if name == "boolean":
        return values.to_numpy(zero_copy_only=False).astype(np.uint8).reshape(rows, 1)
    if name == "timestamp":
        numbers = np.floor_divide(values.cast(pa.int64()).to_numpy(), MICROS_PER_MILLI)
    elif name == "date":
        numbers = values.cast(pa.int32()).to_numpy().astype(np.int64) + DATE_EPOCH_OFFSET
        numbers = numbers.astype(np.uint32)
    elif name == "time":
        numbers = values.cast(pa.int64()).to_numpy()
    else:
        numbers = values.to_numpy()
    # Reinterpret as unsigned and byte-swap: bit-exact, NaN payloads included.
    unsigned = np.ascontiguousarray(numbers).view(f"u{width}")
    return unsigned.astype(f">u{width}").view(np.uint8).reshape(rows, width)


def _per_row_bytes(values: pa.Array, cql_type: CqlType, user_types: UserTypes) -> list[bytes]:
    return [serialize_value(v, cql_type, user_types)[0] for v in _python_values(values, cql_type)]


def _python_values(values: pa.Array, cql_type: CqlType) -> list[object]:
    if cql_type.name == "timestamp":
        return values.cast(pa.int64()).to_pylist()
    if cql_type.name == "date":
        return values.cast(pa.int32()).to_pylist()
    if cql_type.name == "time":
        return values.cast(pa.int64()).to_pylist()
    return values.to_pylist()


@dataclass(frozen=True)
class _Component:
    data: npt.NDArray[np.uint8]
    offsets: npt.NDArray[np.int64]
    width: int | None


def _component(values: pa.Array, cql_type: CqlType, user_types: UserTypes) -> _Component:
    name = cql_type.name
    if name in _FIXED_WIDTHS:
        matrix = _fixed_matrix(values, cql_type)
        width = matrix.shape[1]
        offsets = np.arange(len(values) + 1, dtype=np.int64) * width
        return _Component(np.ascontiguousarray(matrix).reshape(-1), offsets, width)
    if name in _BYTE_TYPES:
        offsets, data = string_buffers(values)
        return _Component(data[offsets[0] : offsets[-1]], offsets - offsets[0], None)
    if name in _PER_ROW_TYPES:
        pieces = _per_row_bytes(values, cql_type, user_types)
        lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        return _Component(np.frombuffer(b"".join(pieces), dtype=np.uint8), offsets, None)
    _scalar(None, cql_type)  # raises the type-specific error
    raise AssertionError("unreachable")


def _compose(components: list[_Component], names: list[str]) -> SerializedKeys:
    """Cassandra's composite key: for each component ``len16 | bytes | 0x00``."""
    rows = len(components[0].offsets) - 1
    lengths = [np.diff(c.offsets) for c in components]
    for name, component_lengths in zip(names, lengths, strict=True):
        if len(component_lengths) and component_lengths.max() > MAX_COMPONENT_BYTES:
            raise ReconcileError(
                f"partition key column {name!r} holds a value over {MAX_COMPONENT_BYTES} bytes, "
                f"which a composite Cassandra key cannot hold"
            )
    row_lengths = sum((length + 3 for length in lengths), np.zeros(rows, dtype=np.int64))
    offsets = np.concatenate(([0], np.cumsum(row_lengths))).astype(np.int64)
    out = np.zeros(int(offsets[-1]), dtype=np.uint8)
    cursor = offsets[:-1].copy()
    for component, component_lengths in zip(components, lengths, strict=True):
        out[cursor] = (component_lengths >> 8).astype(np.uint8)
        out[cursor + 1] = (component_lengths & 0xFF).astype(np.uint8)
        cursor += 2
        shift = np.repeat(cursor - component.offsets[:-1], component_lengths)
        out[np.arange(len(component.data), dtype=np.int64) + shift] = component.data
        cursor += component_lengths + 1  # the 0x00 end-of-component byte is already zero
    return SerializedKeys(out, offsets)


def serialize_partition_keys(
    table: pa.Table, key_columns: KeyColumns, user_types: UserTypes | None = None
) -> SerializedKeys:
    """Each row's serialized partition key, built column-wise with numpy where the type allows."""
    if not key_columns:
        raise ReconcileError("a partition key needs at least one column")
    types = user_types or {}
    components = [_component(_key_array(table, n), t, types) for n, t in key_columns]
    if len(components) == 1:
        only = components[0]
        return SerializedKeys(only.data, only.offsets)
    return _compose(components, [n for n, _ in key_columns])


def partition_tokens(
    table: pa.Table, key_columns: KeyColumns, user_types: UserTypes | None = None
) -> pa.Array:
    """Cassandra's token of every row's partition key (vectorized), as an int64 array."""
    keys = serialize_partition_keys(table, key_columns, user_types)
    widths = keys.lengths
    if len(widths) and (widths == widths[0]).all():
        width = int(widths[0])
        tokens = murmur3_tokens_fixed(keys.data.reshape(len(widths), width))
    else:
        tokens = murmur3_tokens(keys)
    return pa.array(tokens, pa.int64())


def reference_partition_tokens(
    table: pa.Table, key_columns: KeyColumns, user_types: UserTypes | None = None
) -> pa.Array:
    """Same as ``partition_tokens``, one row at a time through the driver's C Murmur3."""
    types = user_types or {}
    columns = [(_python_values(_key_array(table, n), t), t) for n, t in key_columns]
    tokens = []
    for row in range(table.num_rows):
        parts = [serialize_value(values[row], t, types)[0] for values, t in columns]
        if len(parts) == 1:
            key = parts[0]
        else:
            key = b"".join(struct.pack(">H", len(p)) + p + b"\x00" for p in parts)
        tokens.append(murmur3_token(key))
    return pa.array(tokens, pa.int64())


def schema_key_columns(
    schema: CanonicalSchema,
) -> tuple[list[tuple[str, CqlType]], dict[str, list[tuple[str, CqlType]]]]:
    """The partition key columns and user types of a canonical schema, for the functions above."""
    return (
        [(c.name, c.cql_type) for c in schema.partition_key],
        {name: list(fields) for name, fields in schema.user_types},
    )


def table_tokens(table: pa.Table, schema: CanonicalSchema) -> pa.Array:
    """Tokens of a canonical table's rows (vectorized)."""
    key_columns, user_types = schema_key_columns(schema)
    return partition_tokens(table, key_columns, user_types)


__all__: Sequence[str] = (
    "SerializedKeys",
    "murmur3_token",
    "murmur3_tokens",
    "murmur3_tokens_fixed",
    "partition_tokens",
    "reference_partition_tokens",
    "serialize_partition_keys",
    "serialize_value",
    "table_tokens",
)
