"""Reading ONNX files that hookwrap did not write, safely, without torch.

An ONNX file handed to ``check_parity`` or ``bisect`` is data, like a hookwrap file:

* only a regular file is opened, without blocking (:func:`hookwrap._fs.open_regular`);
* external data is read only from inside the model's own folder: every location must be
  relative, without ``..``, must resolve (symlinks included) inside that folder, and must
  be a regular file large enough for the declared offset and length;
* nothing is ever written: onnxruntime gets the model as bytes, with the model's folder
  named as the place of its external data.

This module imports onnx, onnxruntime and numpy only (never torch), so the torch-free
parity gate can use it.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._fs import file_errors, open_regular
from .errors import HookwrapError

__all__ = ["OnnxFile", "read_onnx", "open_session", "run_session", "random_ops_of", "remember", "RANDOM_OPS"]

# ONNX operators whose results are random.
RANDOM_OPS = frozenset({
    "RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli", "Multinomial",
})
_EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


@dataclass(frozen=True)
class OnnxFile:
    """A checked ONNX file: its parsed graph (unless it is one this process wrote, see
    :func:`remember`), the folder its external data lives in, and its random operators."""

    path: Path
    folder: Path
    proto: Any
    external_data: bool
    random_ops: dict[str, int]


# Files this process exported, by identity (device, inode, size, mtime and ctime: any change
# to the file changes its ctime). check_parity need not parse them again: it knows their
# random operators, and their external data is its own.
_WRITTEN: dict[tuple[int, int, int, int, int], tuple[dict[str, int], bool]] = {}


def _identity(info: os.stat_result) -> tuple[int, int, int, int, int]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def remember(path: Path, random_ops: dict[str, int], external_data: bool) -> None:
    """Note an ONNX file that this process has just written and checked."""
    try:
        _WRITTEN[_identity(os.stat(path))] = (dict(random_ops), external_data)
    except OSError:
        pass


def _graphs(graph: Any) -> Iterator[Any]:
    yield graph
    for node in graph.node:
        yield from _node_graphs(node)


def _node_graphs(node: Any) -> Iterator[Any]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield from _graphs(attr.g)
        for sub in attr.graphs:
            yield from _graphs(sub)


def _every_graph(model: Any) -> Iterator[Any]:
    """The main graph and every subgraph, those inside local functions' nodes included."""
    yield from _graphs(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_graphs(node)


def all_nodes(model: Any) -> Iterator[Any]:
    """Every node of the model: main graph, subgraphs and local functions."""
    for function in model.functions:
        yield from function.node
    for graph in _every_graph(model):
        yield from graph.node


def _tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """Every TensorProto in the model, with a name for messages: initializers of every
    graph (subgraphs in local functions included) and tensors in node attributes."""
    for graph in _every_graph(model):
        for init in graph.initializer:
            yield init.name, init
        for sparse in graph.sparse_initializer:
            yield sparse.values.name, sparse.values
            yield sparse.indices.name, sparse.indices
    nodes = list(all_nodes(model))
    for node in nodes:
        for attr in node.attribute:
            where = f"{node.op_type} node {node.name or '?'} attribute {attr.name}"
            if attr.HasField("t"):
                yield where, attr.t
            for t in attr.tensors:
                yield where, t
            sparse_list = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
            for sparse in [*sparse_list, *attr.sparse_tensors]:
                yield where, sparse.values
                yield where, sparse.indices


def _external_entries(tensor: Any) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def _check_location(location: str, folder: Path, real_folder: str, where: str, name: str,
                    sizes: dict[str, int]) -> int:
    """The size of the external data file ``location``, once it is proved to be safe."""
    if location in sizes:
        return sizes[location]
    bad = None
    parts = location.replace("\\", "/").split("/")
    if not location or "\x00" in location:
        bad = "is empty or holds a NUL byte"
    elif os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        bad = "is an absolute path"
    elif ".." in parts:
        bad = "climbs out with '..'"
    else:
        real = os.path.realpath(folder / location)
        if os.path.commonpath([real, real_folder]) != real_folder:
            bad = "resolves (through a symlink) outside the model's folder"
    if bad is not None:
        raise HookwrapError(
            f"{name}: {where} has external data at {location!r}, which {bad}; hookwrap reads external data "
            f"only from inside the model's own folder")
    with open_regular(folder / location, what=f"external data file of {where}") as fh:
        size = os.fstat(fh.fileno()).st_size
    sizes[location] = size
    return size


def check_external_data(model: Any, folder: Path, name: str) -> bool:
    """Check every external-data reference of ``model``; True if it has any.

    Raises:
        HookwrapError: a reference is malformed, leaves ``folder``, is not a regular file,
            or points past the end of its file.
    """
    real_folder = os.path.realpath(folder)
    sizes: dict[str, int] = {}
    found = False
    for where, tensor in _tensors(model):
        entries = _external_entries(tensor)
        external = tensor.data_location == 1  # TensorProto.EXTERNAL
        if not external and not entries:
            continue
        found = True
        label = f"tensor {where!r}" if where == tensor.name else where
        if not external or tensor.HasField("raw_data"):
            raise HookwrapError(f"{name}: {label} mixes external data with inline data; the file is malformed")
        location = entries.get("location", "")
        try:
            offset = int(entries.get("offset", "0"))
            length = int(entries["length"]) if "length" in entries else None
        except ValueError:
            raise HookwrapError(f"{name}: {label} has a malformed external data offset or length") from None
        size = _check_location(location, folder, real_folder, label, name, sizes)
        end = offset + (length if length is not None else 0)
        if offset < 0 or (length is not None and length < 0) or end > size:
            raise HookwrapError(
                f"{name}: {label} reads bytes {offset}..{end} of {location!r}, which has {size} bytes")
    return found


def read_onnx(path: str | os.PathLike[str], *, graph: bool = True) -> OnnxFile:
    """Open, parse and check an ONNX file (its external data references included). With
    ``graph=False`` a file this process wrote (and has not changed since) is not read again.

    Raises:
        HookwrapError: the file cannot be opened or parsed, or its external data is unsafe.
    """
    import onnx

    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    with open_regular(p, what="ONNX file") as fh, file_errors(p, "read the ONNX file"):
        known = _WRITTEN.get(_identity(os.fstat(fh.fileno())))
        if known is not None and not graph:
            return OnnxFile(p, folder, None, known[1], dict(known[0]))
        data = fh.read()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise HookwrapError(f"{p.name}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None
    external = check_external_data(proto, folder, p.name)
    return OnnxFile(p, folder, proto, external, random_ops_of(proto))


_SEED_LOCK = threading.Lock()


def open_session(model: OnnxFile, proto: Any = None, *, seed: int | None = None) -> Any:
    """An onnxruntime CPU session of ``model`` (or of ``proto``, an edited copy of its
    graph), made from bytes: nothing is written, external data resolves in the model's folder.

    Args:
        seed: seeds the session's random operators. onnxruntime gives each random kernel
            its generator when the session is created, from a process-wide seed, and the
            generator moves on with every run; so the session is created right after
            ``onnxruntime.set_seed(seed)``, and the process-wide seed is then set to a
            fresh random value, so that later sessions are not seeded by accident.

    Raises:
        HookwrapError: onnxruntime refuses the model.
    """
    import onnxruntime as ort

    if seed is None:
        return _session(model, proto)
    with _SEED_LOCK:
        ort.set_seed(seed)
        try:
            return _session(model, proto)
        finally:
            ort.set_seed(int.from_bytes(os.urandom(7), "big"))


def _session(model: OnnxFile, proto: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # onnxruntime's threads spin for a while after each run; a parity check runs the torch
    # reference right after, and on a small machine the spinning takes its cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry(_EXTERNAL_FOLDER_KEY, os.fspath(model.folder.resolve()))
    if model.external_data:
        # onnxruntime maps external weights from the file; prepacking would copy every
        # MatMul/Gemm/Conv weight into private memory (2.04 GB of a 2 GB stack, measured),
        # beside the torch model's own copy. Unpacked, they stay in the page cache.
        options.add_session_config_entry("session.disable_prepacking", "1")
    source = model.proto if proto is None else proto
    try:
        if source is None:  # a file this process wrote: onnxruntime reads it (and writes nothing)
            return ort.InferenceSession(os.fspath(model.path), options, providers=["CPUExecutionProvider"])
        return ort.InferenceSession(source.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise HookwrapError(f"{model.path.name} cannot be opened by onnxruntime: {type(exc).__name__}: {exc}") from None


def run_session(session: Any, feeds: dict[str, Any], names: list[str] | None = None, *, what: str = "the ONNX model") -> list:
    """``session.run(names, feeds)``, with onnxruntime's own exceptions (``Fail``,
    ``InvalidArgument``, ...) and numpy's turned into a :class:`HookwrapError`.

    Raises:
        HookwrapError: onnxruntime could not run the model on these inputs.
    """
    try:
        return list(session.run(names, feeds))
    except HookwrapError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())[:400]
        raise HookwrapError(f"onnxruntime failed to run {what} ({type(exc).__name__}: {text})") from None


def _constant_bool(model: Any, name: str) -> bool | None:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name and init.ByteSize() < 64:
            return bool(numpy_helper.to_array(init).reshape(-1)[0])
    for node in model.graph.node:
        if node.op_type == "Constant" and name in node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    return bool(numpy_helper.to_array(attr.t).reshape(-1)[0])
    return None


def random_ops_of(model: Any) -> dict[str, int]:
    """Counts of random operators in an ``onnx.ModelProto``.

    ``Dropout`` nodes whose ``training_mode`` input is not constant-false are counted
    too: they are meant to be random, although onnxruntime's inference build runs them
    as the identity; check_parity notes them.
    """
    counts: Counter[str] = Counter()
    for node in all_nodes(model):
        if node.op_type in RANDOM_OPS:
            counts[node.op_type] += 1
        elif node.op_type == "Dropout" and len(node.input) >= 3 and node.input[2] \
                and _constant_bool(model, node.input[2]) is not False:
            counts["Dropout"] += 1
    return dict(counts)
