"""A minimal, zero-copy reader of serialised ``tf.train.Example`` protos (no TensorFlow).

The input pipeline only needs a few fields of each record, and two of them are large raw pixel
buffers (TFDS ``encoding='bytes'`` tensors). The protobuf runtime copies every bytes field into
a new Python object (~55 us for a paired 224x224 record); this reader walks the wire format and
returns ``memoryview`` slices into the record, so ``np.frombuffer`` gets the pixels without a copy
(~20 us per record, profiled in docs/data.md).

Wire format handled (proto3 ``Example``)::

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }      # map entry: key = 1, value = 2
    Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    Int64List { repeated int64 value = 1 [packed]; }     # parsers must accept unpacked too
    FloatList { repeated float value = 1 [packed]; }
"""

from __future__ import annotations

import numpy as np

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class ProtoError(ValueError):
    """The bytes are not a well-formed tf.train.Example."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise ProtoError(f"truncated varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtoError(f"varint longer than 10 bytes at byte {pos}")




def _read_len(buf, pos: int, end: int) -> tuple[int, int]:
    """Length prefix at `pos` -> (payload start, payload end), checked against `end`."""
    n = buf[pos]
    pos += 1
    if n >= 0x80:  # multi-byte length (pixel buffers); small fields take the fast path above
        n, pos = _varint(buf, pos - 1, end)
    if pos + n > end:
        raise ProtoError(f"length-delimited field at byte {pos} runs past its message ({pos + n} > {end})")
    return pos, pos + n


def _next_field(buf, pos: int, end: int) -> tuple[int, int, int, int]:
    """Field at `pos` -> (field number, wire type, payload start, payload end); the next field
    starts at payload end. Varint/fixed payloads are returned as their raw byte range."""
    tag = buf[pos]
    pos += 1
    if tag >= 0x80:
        tag, pos = _varint(buf, pos - 1, end)
    wire_type = tag & 7
    if wire_type == _LEN:
        start, stop = _read_len(buf, pos, end)
    elif wire_type == _VARINT:
        start, stop = pos, _varint(buf, pos, end)[1]
    elif wire_type == _I64:
        start, stop = pos, pos + 8
    elif wire_type == _I32:
        start, stop = pos, pos + 4
    else:
        raise ProtoError(f"unsupported wire type {wire_type} at byte {pos}")
    if stop > end:
        raise ProtoError(f"field {tag >> 3} at byte {pos} runs past its message ({stop} > {end})")
    return tag >> 3, wire_type, start, stop


def _int64_list(buf, start: int, end: int) -> list[int]:
    values = []
    pos = start
    while pos < end:
        field, wire, s, e = _next_field(buf, pos, end)
        pos = e
        if field != 1:
            continue
        if wire == _LEN:  # packed
            p = s
            while p < e:
                v, p = _varint(buf, p, e)
                values.append(v)
        elif wire == _VARINT:
            values.append(_varint(buf, s, e)[0])
    # int64 travels as its unsigned two's complement.
    return [v - (1 << 64) if v >= 1 << 63 else v for v in values]


def _feature_value(buf, start: int, end: int):
    """One Feature -> list of memoryviews (bytes_list), list of ints (int64_list) or float32 ndarray (float_list)."""
    pos = start
    while pos < end:
        kind, wire, k_start, k_end = _next_field(buf, pos, end)
        pos = k_end
        if wire != _LEN:
            continue
        if kind == 1:  # BytesList
            values, p = [], k_start
            while p < k_end:
                field, w, s, e = _next_field(buf, p, k_end)
                p = e
                if field == 1 and w == _LEN:
                    values.append(buf[s:e])
            return values
        if kind == 3:
            return _int64_list(buf, k_start, k_end)
        if kind == 2:  # FloatList, packed or not
            parts, p = [], k_start
            while p < k_end:
                field, w, s, e = _next_field(buf, p, k_end)
                p = e
                if field == 1:
                    parts.append(np.frombuffer(buf[s:e], "<f4"))
            return np.concatenate(parts) if parts else np.zeros((0,), np.float32)
    return []  # a Feature with no kind set: an empty list


def parse_example(data: bytes | memoryview, keys: frozenset[str] | None = None) -> dict[str, object]:
    """Serialised tf.train.Example -> {key: value}.

    Values: a list of ``memoryview`` slices of `data` for bytes features (zero copy), a list of
    Python ints for int64 features, a float32 ndarray for float features.

    Args:
      data: the serialised proto (one ArrayRecord record).
      keys: only these features are decoded (others are skipped); None for all.
    Raises:
      ProtoError: the bytes are not a well-formed Example.
    """
    buf = memoryview(data)
    end = len(buf)
    out: dict[str, object] = {}
    try:
        pos = 0
        while pos < end:
            field, wire, f_start, f_end = _next_field(buf, pos, end)
            pos = f_end
            if field != 1 or wire != _LEN:
                continue
            entry_pos = f_start
            while entry_pos < f_end:  # map entries of Features
                entry, e_wire, e_start, e_end = _next_field(buf, entry_pos, f_end)
                entry_pos = e_end
                if entry != 1 or e_wire != _LEN:
                    continue
                key = value = None
                p = e_start
                while p < e_end:
                    part, p_wire, p_start, p_end = _next_field(buf, p, e_end)
                    p = p_end
                    if part == 1 and p_wire == _LEN:
                        key = str(buf[p_start:p_end], "utf-8")
                    elif part == 2 and p_wire == _LEN:
                        value = (p_start, p_end)
                if key is None:
                    raise ProtoError(f"feature map entry at byte {e_start} has no key")
                if keys is None or key in keys:
                    out[key] = _feature_value(buf, *value) if value else []
    except IndexError:
        raise ProtoError(f"truncated message ({end} bytes)") from None
    return out
