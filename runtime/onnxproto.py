"""The external-data files an ONNX model refers to, read without the `onnx` package.

Why: a model package hashes every file it lists, but ONNX Runtime also opens the files that the model's
tensors name as *external data* (weights stored beside the .onnx, `location` relative to its folder).
A file the manifest does not list would be loaded unchecked, so the package loader asks every listed
.onnx file for its external-data locations and requires each one to be a listed (hence hashed) file.
`onnx` is an export-only dependency (torch-sized), so the runtime reads the few protobuf fields it needs
itself: protobuf's wire format is a sequence of (field number, wire type) tags followed by a varint, a
fixed 4 or 8 bytes, or a varint length and that many bytes; nested messages are length-delimited, so
everything else (raw tensor data included) is skipped by its length without being decoded or copied.

Fields read (numbers from onnx/onnx.proto, checked against the copy installed with onnx 1.x):
  ModelProto         graph = 7 (GraphProto), training_info = 20 (TrainingInfoProto),
                     functions = 25 (FunctionProto)
  TrainingInfoProto  initialization = 1, algorithm = 2 (GraphProto)
  FunctionProto      node = 7 (NodeProto), attribute_proto = 11 (AttributeProto)
  GraphProto         node = 1 (NodeProto), initializer = 5 (TensorProto),
                     sparse_initializer = 15 (SparseTensorProto)
  NodeProto          attribute = 5 (AttributeProto)
  AttributeProto     t = 5, tensors = 10 (TensorProto); g = 6, graphs = 11 (GraphProto, subgraphs of
                     If / Loop / Scan); sparse_tensor = 22, sparse_tensors = 23 (SparseTensorProto)
  SparseTensorProto  values = 1, indices = 2 (TensorProto)
  TensorProto        external_data = 13 (StringStringEntryProto), data_location = 14 (enum: 1 = EXTERNAL)
  StringStringEntryProto  key = 1, value = 2 (the entry with key "location" names the file)

These are the same tensors `onnx.external_data_helper` visits (initializers and attribute tensors, in
every graph and subgraph). A location is reported whatever `data_location` says (a reader that honours
an entry this one ignored would otherwise load an unchecked file); a tensor marked EXTERNAL without a
location is malformed. Nesting is bounded (MAX_DEPTH) so a hostile file cannot exhaust the stack.
"""
from __future__ import annotations

import mmap
import os

MAX_DEPTH = 64  # nested messages (graphs in attributes in nodes in graphs ...)
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class ProtoError(ValueError):
    """The bytes are not a well-formed protobuf message of the expected shape."""


def _varint(buf, i: int, end: int) -> tuple:
    shift = value = 0
    while True:
        if i >= end:
            raise ProtoError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift >= 70:
            raise ProtoError("varint longer than 10 bytes")


def _fields(buf, start: int, end: int):
    """(field number, wire type, value) for each field of the message in buf[start:end]; a
    length-delimited value is the (start, end) of its bytes, a varint its value, fixed ones None."""
    i = start
    while i < end:
        tag, i = _varint(buf, i, end)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise ProtoError("field number 0")
        if wire == 0:
            value, i = _varint(buf, i, end)
            yield field, wire, value
        elif wire == 2:
            n, i = _varint(buf, i, end)
            if n > end - i:
                raise ProtoError("length runs past the end of its message")
            yield field, wire, (i, i + n)
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            if i > end:
                raise ProtoError("truncated fixed-width field")
            yield field, wire, None
        else:  # 3, 4: groups (not used by ONNX); 6, 7: invalid
            raise ProtoError(f"unsupported wire type {wire}")


class _Reader:
    def __init__(self, buf):
        self.buf = buf
        self.locations: list = []

    def _sub(self, spans, depth: int, visit) -> None:
        if depth > MAX_DEPTH:
            raise ProtoError(f"messages nested deeper than {MAX_DEPTH}")
        visit(*spans, depth + 1)

    def _each(self, start, end, depth, wanted: dict) -> None:
        for field, wire, value in _fields(self.buf, start, end):
            visit = wanted.get(field)
            if visit is not None:
                if wire != 2:
                    raise ProtoError(f"field {field} is not a message")
                self._sub(value, depth, visit)

    def model(self, start, end, depth=0):
        self._each(start, end, depth, {7: self.graph, 20: self.training, 25: self.function})

    def training(self, start, end, depth):
        self._each(start, end, depth, {1: self.graph, 2: self.graph})

    def function(self, start, end, depth):
        self._each(start, end, depth, {7: self.node, 11: self.attribute})

    def graph(self, start, end, depth):
        self._each(start, end, depth, {1: self.node, 5: self.tensor, 15: self.sparse})

    def node(self, start, end, depth):
        self._each(start, end, depth, {5: self.attribute})

    def attribute(self, start, end, depth):
        self._each(start, end, depth, {5: self.tensor, 10: self.tensor, 6: self.graph, 11: self.graph,
                                       22: self.sparse, 23: self.sparse})

    def sparse(self, start, end, depth):
        self._each(start, end, depth, {1: self.tensor, 2: self.tensor})

    def tensor(self, start, end, depth):
        location, external = None, False
        for field, wire, value in _fields(self.buf, start, end):
            if field == 14 and wire == 0:
                external = value == EXTERNAL
            elif field == 13 and wire == 2:
                key = val = None
                for f, w, v in _fields(self.buf, *value):
                    if w == 2 and f in (1, 2):
                        text = bytes(self.buf[v[0]:v[1]]).decode("utf-8", errors="strict")
                        key, val = (text, val) if f == 1 else (key, text)
                if key == "location":
                    location = val if val is not None else ""
        if location is not None:
            self.locations.append(location)
        elif external:
            raise ProtoError("a tensor's data is EXTERNAL but names no location")


def external_locations(data) -> list:
    """The external-data `location` values (as written, in file order, without repeats) of a serialized
    ModelProto (bytes, bytearray, memoryview or mmap). Raises ProtoError on malformed input."""
    reader = _Reader(data)
    try:
        reader.model(0, len(data))
    except UnicodeDecodeError:
        raise ProtoError("an external-data entry is not UTF-8") from None
    return list(dict.fromkeys(reader.locations))


def external_locations_of(path: str | os.PathLike) -> list:
    """`external_locations` of an .onnx file, read through mmap (a 2 GB model is not copied)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return []
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return external_locations(mm)


# The main graph's inputs and outputs (onnx.proto: ModelProto.graph = 7; GraphProto.input = 11, output = 12,
# initializers excluded; ValueInfoProto.name = 1, type = 2; TypeProto.tensor_type = 1; TypeProto.Tensor.shape
# = 2; TensorShapeProto.dim = 1; Dimension.dim_value = 1, dim_param = 2). A dimension is its int, or its
# symbolic name (a dynamic batch), or None when neither is set.
def _dims(buf, start, end) -> list:
    dims = []
    for f, w, v in _fields(buf, start, end):
        if f == 1 and w == 2:  # a Dimension
            value = None
            for g, x, y in _fields(buf, *v):
                if g == 1 and x == 0:
                    value = y - (1 << 64) if y >= 1 << 63 else y
                elif g == 2 and x == 2:
                    value = bytes(buf[y[0]:y[1]]).decode("utf-8", errors="replace")
            dims.append(value)
    return dims


def _value_info(buf, start, end) -> tuple:
    name, shape = "", None
    for f, w, v in _fields(buf, start, end):
        if f == 1 and w == 2:
            name = bytes(buf[v[0]:v[1]]).decode("utf-8", errors="replace")
        elif f == 2 and w == 2:
            for g, x, y in _fields(buf, *v):  # TypeProto
                if g == 1 and x == 2:  # tensor_type
                    for h, z, u in _fields(buf, *y):
                        if h == 2 and z == 2:
                            shape = _dims(buf, *u)
    return name, shape


def io_shapes(data) -> dict:
    """{"inputs": [(name, dims)], "outputs": [(name, dims)]} of a serialized model's main graph (dims
    None where the model declares no shape). Raises ProtoError on malformed input."""
    out = {"inputs": [], "outputs": []}
    for f, w, v in _fields(data, 0, len(data)):
        if f == 7 and w == 2:
            for g, x, y in _fields(data, *v):
                if x == 2 and g in (11, 12):
                    out["inputs" if g == 11 else "outputs"].append(_value_info(data, *y))
    return out


def io_shapes_of(path: str | os.PathLike) -> dict:
    """`io_shapes` of an .onnx file, through mmap."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise ProtoError("empty file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return io_shapes(mm)
