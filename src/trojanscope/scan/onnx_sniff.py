"""Whether bytes start like an ONNX model, without importing onnx (slow to import: the scanner
sniffs every file it cannot place otherwise, and `trojanscope scan` must start fast)."""

from __future__ import annotations

#: ModelProto field number -> protobuf wire type (0 varint, 2 length-delimited), onnx.proto.
_MODEL_FIELDS: dict[int, int] = {
    1: 0,  # ir_version
    2: 2,  # producer_name
    3: 2,  # producer_version
    4: 2,  # domain
    5: 0,  # model_version
    6: 2,  # doc_string
    7: 2,  # graph
    8: 2,  # opset_import
    14: 2,  # metadata_props
    20: 2,  # training_info
    25: 2,  # functions
    26: 2,  # configuration
}
MAX_IR_VERSION = 64  # onnx 1.23 writes IR version 14; far above that is not ONNX
MAX_SNIFF_FIELDS = 256


def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    """Decode a protobuf varint at ``pos``: ``(value, next_pos)`` or None if malformed."""
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            return None
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    return None


def looks_like_onnx(data: bytes) -> bool:
    """Whether ``data`` starts like a serialized ModelProto (content only, no extension).

    Walks the top-level protobuf fields: each must be a ModelProto field with its wire type,
    ``ir_version`` must be present and plausible, and a graph or opset import must be seen. A
    file truncated inside its last field still counts, so the scan can report it as broken.
    """
    pos, ir_version, seen = 0, None, set()
    for _ in range(MAX_SNIFF_FIELDS):
        if pos >= len(data):
            break
        tag = _varint(data, pos)
        if tag is None:
            return False
        number, wire = tag[0] >> 3, tag[0] & 7
        if _MODEL_FIELDS.get(number) != wire:
            return False
        value = _varint(data, tag[1])
        if value is None:
            return False
        seen.add(number)
        if wire == 0:
            if number == 1:
                ir_version = value[0]
            pos = value[1]
        else:
            pos = value[1] + value[0]
            if pos > len(data):
                break  # truncated inside this field
    return ir_version is not None and 1 <= ir_version <= MAX_IR_VERSION and bool(seen & {7, 8})
