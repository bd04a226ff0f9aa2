"""Find the external-data files an ONNX model refers to, without the onnx package.

A TensorProto can keep its bytes in another file (``external_data`` entries with a
``location``). A bundle from someone else could point that at ``../../etc/passwd``; the
runtime must refuse such a model before onnxruntime opens anything. This walks just enough of
the protobuf wire format (model -> graph -> initializers, node attributes, subgraphs and
functions) to list every location.
"""

from __future__ import annotations

from collections.abc import Iterator

# Field numbers from onnx.proto3.
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS = (
    5,
    6,
    10,
    11,
    22,
    23,
)
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_FUNCTION_NODE = 7
_TENSOR_EXTERNAL_DATA = 13
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


#: How deeply subgraphs (If/Loop/Scan bodies) may nest; real models nest a few levels.
MAX_DEPTH = 64


class MalformedModel(ValueError):
    """The bytes are not a well-formed protobuf message."""


def external_locations(data: bytes) -> list[str]:
    """Every external-data ``location`` named anywhere in a serialised ModelProto.

    The walk keeps its own stack (no recursion), and refuses a model whose graphs nest more
    than :data:`MAX_DEPTH` deep, so a crafted file cannot exhaust Python's stack."""
    found: list[str] = []
    stack: list[tuple[str, memoryview, int]] = []
    for number, value in _fields(memoryview(data)):
        if number == _MODEL_GRAPH:
            stack.append(("graph", value, 1))
        elif number == _MODEL_FUNCTIONS:
            stack.extend(("node", node, 1) for n, node in _fields(value) if n == _FUNCTION_NODE)
    while stack:
        kind, value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise MalformedModel(f"graphs nest more than {MAX_DEPTH} levels deep")
        if kind == "graph":
            for number, v in _fields(value):
                if number == _GRAPH_NODE:
                    stack.append(("node", v, depth))
                elif number == _GRAPH_INITIALIZER:
                    _tensor(v, found)
                elif number == _GRAPH_SPARSE_INITIALIZER:
                    _sparse(v, found)
        else:  # a node: its attributes' tensors and subgraphs
            for number, attribute in _fields(value):
                if number != _NODE_ATTRIBUTE:
                    continue
                for n, v in _fields(attribute):
                    if n in (_ATTR_T, _ATTR_TENSORS):
                        _tensor(v, found)
                    elif n in (_ATTR_G, _ATTR_GRAPHS):
                        stack.append(("graph", v, depth + 1))
                    elif n in (_ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS):
                        _sparse(v, found)
    return found


def _sparse(data: memoryview, found: list[str]) -> None:
    for number, value in _fields(data):
        if number in (_SPARSE_VALUES, _SPARSE_INDICES):
            _tensor(value, found)


def _tensor(data: memoryview, found: list[str]) -> None:
    for number, value in _fields(data):
        if number != _TENSOR_EXTERNAL_DATA:
            continue
        entry = {n: bytes(v) for n, v in _fields(value)}
        if entry.get(_ENTRY_KEY) == b"location":
            found.append(entry.get(_ENTRY_VALUE, b"").decode("utf-8", errors="replace"))


def _fields(data: memoryview) -> Iterator[tuple[int, memoryview]]:
    """(field number, bytes) of each length-delimited field; other wire types are skipped."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise MalformedModel("a field runs past the end of the data")
            yield number, data[pos : pos + length]
            pos += length
        else:
            raise MalformedModel(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise MalformedModel("truncated field")


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedModel("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
