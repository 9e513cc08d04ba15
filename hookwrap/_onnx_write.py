"""Writing an exported ONNX model as one file, each weight's bytes written once.

``onnx_ir.save`` builds a full ``ModelProto`` (copying every weight into it) and then
serializes it (copying every weight again) before a byte reaches the disk: on vgg16's
553 MB that is about two of the five seconds an export takes. Here the model is
serialized without its weights, and each weight follows as one more ``graph`` field
holding one ``initializer``: protobuf merges repeated occurrences of a message field,
so readers (onnx, onnxruntime) see one graph with every initializer, in order. The
weight's ``raw_data`` is written straight from the tensor's memory.

Models whose weights do not fit one protobuf (over 1.5 GB, the exporter's own threshold)
and weights with no fixed-size little-endian layout (strings, 4-bit types) go through
the exporter's own writer instead; :func:`write_model` says which it did.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["write_model", "SINGLE_FILE_LIMIT"]

SINGLE_FILE_LIMIT = 1536 * 1024 * 1024  # torch.onnx writes external data above this

# Field numbers of onnx.proto: ModelProto.graph, GraphProto.initializer, TensorProto.raw_data.
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(field: int, length: int) -> bytes:
    """The key and length of a length-delimited field."""
    return _varint(field << 3 | 2) + _varint(length)


def _raw(tensor: Any) -> Any:
    """The tensor's bytes as a buffer, without a copy where the layout allows."""
    bits = tensor.dtype.bitwidth
    expected = tensor.size * bits // 8
    if bits >= 8 and sys.byteorder == "little":
        try:
            array = tensor.numpy()
        except Exception:  # a dtype numpy cannot hold: let the tensor serialize itself
            return tensor.tobytes()
        if array.nbytes == expected and array.flags.c_contiguous:
            return memoryview(array).cast("B")
    return tensor.tobytes()


def _write_initializer(fh: BinaryIO, value: Any) -> None:
    import onnx

    tensor = value.const_value
    head = onnx.TensorProto(name=value.name, data_type=tensor.dtype.value, dims=list(tensor.shape.numpy()))
    if tensor.doc_string:
        head.doc_string = tensor.doc_string
    for key, text in tensor.metadata_props.items():
        head.metadata_props.add(key=key, value=text)
    header, raw = head.SerializeToString(), _raw(tensor)
    tensor_len = len(header) + len(_key(_TENSOR_RAW_DATA, len(raw))) + len(raw)
    graph_len = len(_key(_GRAPH_INITIALIZER, tensor_len)) + tensor_len
    fh.write(_key(_MODEL_GRAPH, graph_len) + _key(_GRAPH_INITIALIZER, tensor_len) + header
             + _key(_TENSOR_RAW_DATA, len(raw)))
    fh.write(raw)


def _streamable(initializers: dict[str, Any]) -> bool:
    import onnx_ir as ir

    values = list(initializers.values())
    if any(v.const_value is None or isinstance(v.const_value, ir.ExternalTensor) for v in values):
        return False
    if any(v.const_value.dtype == ir.DataType.STRING for v in values):
        return False
    return sum(v.const_value.nbytes for v in values) <= SINGLE_FILE_LIMIT


def write_model(program: Any, path: Path) -> bool:
    """Write ``program`` (a ``torch.onnx.ONNXProgram``) to ``path``.

    Returns:
        True when the weights were streamed into one file; False when the exporter's own
        ``save`` wrote it (large models get an external ``.data`` file beside ``path``).
    """
    from onnx_ir import serde

    graph = program.model.graph
    initializers = dict(graph.initializers)
    if not _streamable(initializers):
        program.save(str(path))
        return False
    tensors = {name: value.const_value for name, value in initializers.items()}
    for value in initializers.values():  # onnx_ir skips initializers without a value, keeping their value_info
        value.const_value = None
    quiet = logging.getLogger(serde.__name__)  # it warns of each initializer left without a value
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        skeleton = serde.serialize_model(program.model).SerializeToString()
    finally:
        quiet.setLevel(level)
        for name, value in initializers.items():
            value.const_value = tensors[name]
    with open(path, "wb") as fh:
        fh.write(skeleton)
        for value in initializers.values():
            _write_initializer(fh, value)
    return True
