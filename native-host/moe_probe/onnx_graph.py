"""Just enough of the ONNX file format to find router TopK nodes and expose their outputs.

Standard library only: a job that runs ONNX Runtime need not have the `onnx` package, and the
probe must not load it into one that has. An ONNX model is a Protocol Buffers message
(onnx.proto: ModelProto.graph = 7; GraphProto.node = 1, initializer = 5, input = 11, output = 12,
value_info = 13; NodeProto.input = 1, output = 2, name = 3, op_type = 4, attribute = 5,
domain = 7; TensorProto.dims = 1, int64_data = 7, name = 8, raw_data = 9, data_location = 14).
Reading walks the wire format without copying tensor data. Writing needs no re-encoding at all:
Protocol Buffers merges a message field that occurs twice and appends repeated fields, so the
model's bytes followed by one more `graph` field holding only `output` entries is the same model
with those outputs added, every byte of the original kept as it was.
"""

import struct
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5


class OnnxFormatError(ValueError):
    pass


def _varint(data, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise OnnxFormatError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise OnnxFormatError("varint too long")


def fields(data) -> Iterator[Tuple[int, int, object]]:
    """(field number, wire type, value) of each field of a message; BYTES values are memoryviews."""
    view = memoryview(data)
    pos, end = 0, len(view)
    while pos < end:
        key, pos = _varint(view, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(view, pos)
        elif wire == FIXED64:
            value, pos = view[pos:pos + 8], pos + 8
        elif wire == BYTES:
            length, pos = _varint(view, pos)
            if pos + length > end:
                raise OnnxFormatError("field %d runs past the end of its message" % number)
            value, pos = view[pos:pos + length], pos + length
        elif wire == FIXED32:
            value, pos = view[pos:pos + 4], pos + 4
        else:
            raise OnnxFormatError("unsupported wire type %d" % wire)
        yield number, wire, value


def _text(value) -> str:
    return bytes(value).decode("utf-8", "replace")


def _packed_varints(value) -> List[int]:
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v - (1 << 64) if v >= 1 << 63 else v)
    return out


class Tensor(NamedTuple):
    name: str
    dims: Tuple[int, ...]
    data_type: int
    values: Optional[List[int]]  # int64 values of small integer tensors (e.g. TopK's k); None otherwise
    external: bool


INT64, INT32 = 7, 6


def parse_tensor(data) -> Tensor:
    name, dims, dtype, ints, raw, external = "", [], 0, [], None, False
    for number, wire, value in fields(data):
        if number == 1:
            dims += _packed_varints(value) if wire == BYTES else [value]
        elif number == 2:
            dtype = value
        elif number in (5, 7):  # int32_data, int64_data
            ints += _packed_varints(value) if wire == BYTES else [value]
        elif number == 8:
            name = _text(value)
        elif number == 9:
            raw = value
        elif number == 14:
            external = value == 1
    values = None
    count = 1
    for d in dims:
        count *= d
    if dtype in (INT64, INT32) and count <= 16:
        if ints:
            values = ints[:count]
        elif raw is not None and len(raw) == count * (8 if dtype == INT64 else 4):
            values = list(struct.unpack("<%d%s" % (count, "q" if dtype == INT64 else "i"), bytes(raw)))
    return Tensor(name, tuple(dims), dtype, values, external)


class Node(NamedTuple):
    name: str
    op_type: str
    domain: str
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]
    ints: Dict[str, int]  # integer attributes (axis, largest, transB, ...)
    tensors: Dict[str, Tensor]  # tensor attributes (a Constant's value)


def parse_node(data) -> Node:
    name, op, domain, inputs, outputs, ints, tensors = "", "", "", [], [], {}, {}
    for number, _wire, value in fields(data):
        if number == 1:
            inputs.append(_text(value))
        elif number == 2:
            outputs.append(_text(value))
        elif number == 3:
            name = _text(value)
        elif number == 4:
            op = _text(value)
        elif number == 7:
            domain = _text(value)
        elif number == 5:
            attr_name, attr_int, attr_tensor = "", None, None
            for a_number, a_wire, a_value in fields(value):
                if a_number == 1:
                    attr_name = _text(a_value)
                elif a_number == 3 and a_wire == VARINT:
                    attr_int = a_value - (1 << 64) if a_value >= 1 << 63 else a_value
                elif a_number == 5:
                    attr_tensor = parse_tensor(a_value)
            if attr_int is not None:
                ints[attr_name] = attr_int
            if attr_tensor is not None:
                tensors[attr_name] = attr_tensor
    return Node(name, op, domain, tuple(inputs), tuple(outputs), ints, tensors)


def _value_info(data) -> Tuple[str, Optional[Tuple[Optional[int], ...]], int]:
    """(name, static shape or None, element type) of a ValueInfoProto."""
    name, shape, elem = "", None, 0
    for number, _wire, value in fields(data):
        if number == 1:
            name = _text(value)
        elif number == 2:  # TypeProto
            for t_number, _w, t_value in fields(value):
                if t_number != 1:  # tensor_type
                    continue
                for tt_number, _w2, tt_value in fields(t_value):
                    if tt_number == 1:
                        elem = tt_value
                    elif tt_number == 2:  # TensorShapeProto
                        dims = []
                        for _d_number, _w3, dim in fields(tt_value):
                            size = None
                            for dd_number, dd_wire, dd_value in fields(dim):
                                if dd_number == 1 and dd_wire == VARINT:
                                    size = dd_value
                            dims.append(size)
                        shape = tuple(dims)
    return name, shape, elem


class Graph(NamedTuple):
    name: str
    producer: str
    nodes: List[Node]
    initializers: Dict[str, Tensor]
    inputs: List[Tuple[str, Optional[tuple], int]]
    outputs: List[str]
    shapes: Dict[str, Optional[tuple]]  # static shapes the model declares (value_info, inputs, outputs)
    external_data: bool


def parse_model(data) -> Graph:
    """The main graph of a serialized ModelProto (subgraphs of If/Loop nodes are not read)."""
    graph_parts, producer = [], ""
    for number, _wire, value in fields(data):
        if number == 7:
            graph_parts.append(value)
        elif number == 2:
            producer = _text(value)
    if not graph_parts:
        raise OnnxFormatError("no graph in this model")
    name, nodes, inits, inputs, outputs, shapes = "", [], {}, [], [], {}
    for part in graph_parts:
        for number, _wire, value in fields(part):
            if number == 1:
                nodes.append(parse_node(value))
            elif number == 2:
                name = _text(value)
            elif number == 5:
                tensor = parse_tensor(value)
                inits[tensor.name] = tensor
            elif number in (11, 12, 13):
                info = _value_info(value)
                shapes[info[0]] = info[1]
                if number == 11:
                    inputs.append(info)
                elif number == 12:
                    outputs.append(info[0])
    external = any(t.external for t in inits.values())
    return Graph(name, producer, nodes, inits, [i for i in inputs if i[0] not in inits], outputs, shapes, external)


def _key(number: int, wire: int) -> bytes:
    return _encode_varint((number << 3) | wire)


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _key(number, BYTES) + _encode_varint(len(payload)) + payload


def with_outputs(model: bytes, names: List[str]) -> bytes:
    """The same model with `names` (values the graph computes) added to its graph outputs."""
    extra = b"".join(_bytes_field(12, _bytes_field(1, name.encode("utf-8"))) for name in names)
    return bytes(model) + _bytes_field(7, extra)
