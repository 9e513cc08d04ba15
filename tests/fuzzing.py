"""Hypothesis strategies that mutate hookwrap files, and the property every case must keep.

The property: ``hw.load`` of a mutated file either succeeds or raises a ``HookwrapError``
subclass; nothing else escapes, no case takes more than 5 s (a watchdog ends the process
with every thread's traceback if one hangs, even inside native code), no module that was
not imported before gets imported, and no file appears in or changes in the canary
folder. A loaded model that holds a captured graph has only allowlisted ops and is run
once, under the same watch.

The mutations: header bytes, the manifest's JSON (with a recomputed digest), the tensor
table, the tensor data, the length prefix, and two aimed at captured hooks: a graph that
is either one allowlisted operator with hostile arguments (``hostile_graph``) or random
operators drawn from all of ``torch.ops.aten`` (half of them from the allowlist), whose
string arguments are paths in the canary folder, and random tree specs
(including torch's own spec format naming a canary module). Used by
``tests/test_fuzz.py`` (a few hundred cases in ``make test``) and
``benchmarks/bench_fuzz.py`` (thousands in ``make bench``).
"""

from __future__ import annotations

import faulthandler
import functools
import json
import struct
import sys
import time
from pathlib import Path

import graph_cases as gc
import torch
from helpers import small_cnn
from hypothesis import strategies as st

import hookwrap as hw
from hookwrap import wrappers as W
from hookwrap._graph import _PY_FUNCS, ALLOWED_OPS
from hookwrap.io import manifest_digest

CASE_LIMIT_SECONDS = 5.0


def seed_file(folder: Path) -> Path:
    """A valid hookwrap file with a Chain wrapper and a CapturedHook that owns a constant."""
    model = small_cnn()
    model[0].register_forward_hook(lambda m, a, o: torch.clamp(o * 1.5, -2, 2))
    offset = torch.randn(4)
    model[5].register_forward_hook(lambda m, a, o: o * o.mean() + offset)
    path = folder / "seed.safetensors"
    hw.save(hw.convert(model, (torch.randn(2, 3, 10, 10),)), path)
    return path


CANARY_MODULE = "hookwrap_fuzz_canary"


def canary_folder(folder: Path) -> Path:
    """A folder the fuzzed files name in their arguments, holding a module that would leave
    a file behind if it were ever imported; it is put on ``sys.path``."""
    canary = folder / "canary"
    canary.mkdir(exist_ok=True)
    (canary / f"{CANARY_MODULE}.py").write_text(f"open({str(canary / 'imported')!r}, 'w').write('x')\nx = list\n")
    (canary / "victim.bin").write_bytes(b"precious" * 8)
    if str(canary) not in sys.path:
        sys.path.insert(0, str(canary))
    return canary


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@functools.cache
def all_aten_ops() -> list[str]:
    """Every aten operator overload of this torch, as graph op names."""
    names = []
    for full in torch._C._dispatch_get_all_op_names():
        if full.startswith("aten::"):
            op, _, overload = full[len("aten::"):].partition(".")
            names.append(f"aten.{op}.{overload or 'default'}")
    return sorted(names)


PY_FUNCS = ["operator.getitem", "operator.mul", "operator.pow", "operator.add", "math.ceil", "torch.sym_max"]


def graph_values(limit: int, canary: Path) -> st.SearchStrategy:
    leaf = st.one_of(
        st.integers(0, max(limit - 1, 0)).map(lambda i: {"n": i}),
        st.integers(-4, 64), st.floats(-4, 4, allow_nan=False), st.booleans(), st.none(),
        st.sampled_from([str(canary / "victim.bin"), str(canary / "new.bin"), "/etc/hostname"]),
        st.sampled_from([{"dtype": "float32"}, {"dtype": "uint8"}, {"device": "cpu"},
                         {"memory_format": "contiguous_format"}, {"float": "inf"}]),
    )
    return st.one_of(leaf, st.lists(st.integers(0, 8), max_size=3).map(lambda v: {"list": v}),
                     st.lists(leaf, max_size=3).map(lambda v: {"tuple": v}))


@st.composite
def random_graph(draw: st.DrawFn, n_inputs: int, canary: Path) -> dict:
    nodes = []
    allowed, every = sorted(ALLOWED_OPS), all_aten_ops() + PY_FUNCS
    for i in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(allowed) if draw(st.booleans()) else st.sampled_from(every))
        args = draw(st.lists(graph_values(n_inputs + i, canary), max_size=4))
        kwargs = draw(st.dictionaries(st.sampled_from(["dim", "dtype", "size", "p", "train", "shared", "alpha"]),
                                      graph_values(n_inputs + i, canary), max_size=2))
        nodes.append({"op": op, "args": args, "kwargs": kwargs})
    out = draw(st.integers(0, n_inputs + len(nodes) - 1))
    return {"version": 1, "inputs": n_inputs, "nodes": nodes, "outputs": [{"n": out}]}


@st.composite
def hostile_graph(draw: st.DrawFn, n_inputs: int) -> dict:
    """One allowlisted operator on the graph's own inputs, every other argument drawn from
    the conformance harness's hostile values (tests/graph_cases.py): what an attacker who
    keeps to the allowlist would write, and what the static check at load must judge."""
    op = draw(st.sampled_from(sorted(ALLOWED_OPS)))
    schema = gc._overload(op)._schema
    args: list = []
    kwargs: dict = {}
    positional = True

    def tensor() -> dict:
        return {"n": draw(st.integers(0, max(n_inputs - 1, 0)))}

    for arg in schema.arguments:
        pick = draw(st.sampled_from(gc._choices(arg, hostile=draw(st.booleans()))))
        if pick is gc._DEFAULT:
            positional = False
            continue
        if isinstance(pick, tuple) and pick[0] == "tensor":
            value = tensor()
        elif isinstance(pick, tuple) and pick[0] == "tensors":
            value = {"list": [None if k is None else tensor() for k in pick[1]]}
        else:
            value = pick
        if arg.kwarg_only or not positional:
            kwargs[arg.name] = value
        else:
            args.append(value)
    nodes = [{"op": op, "args": args, "kwargs": kwargs}]
    returns = [str(r.type) for r in schema.returns]
    out = n_inputs
    if returns and returns[0] in ("List[Tensor]",) or len(returns) > 1:
        nodes.append({"op": "operator.getitem", "args": [{"n": n_inputs}, 0], "kwargs": {}})
        out = n_inputs + 1
    elif returns != ["Tensor"]:
        out = 0
    return {"version": 1, "inputs": n_inputs, "nodes": nodes, "outputs": [{"n": out}]}


TORCH_SPEC = json.dumps([1, {"type": "collections.defaultdict", "context": {
    "default_factory_module": CANARY_MODULE, "default_factory_name": "x", "dict_context": []}, "children_spec": []}])

tree_specs = st.recursive(
    st.none() | st.just(TORCH_SPEC) | st.text(max_size=8) | st.integers(-2, 2),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda v: {"tuple": v}),
        st.lists(inner, max_size=3).map(lambda v: {"list": v}),
        st.lists(st.tuples(st.text(max_size=3) | st.integers(0, 3), inner).map(list), max_size=3).map(
            lambda v: {"dict": v}),
        st.lists(inner, max_size=2).map(lambda v: {"namedtuple": [f"f{i}" for i in range(len(v))], "items": v}),
        st.fixed_dictionaries({"type": st.sampled_from([f"{CANARY_MODULE}.x", "builtins.tuple"]),
                               "children_spec": st.lists(inner, max_size=2)}),
    ),
    max_leaves=8,
)


def _captured(manifest: dict) -> dict:
    return manifest["wrappers"]["5"]["post"][0]["config"]


def split(raw: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header: dict, data: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _set(root: object, path: tuple, value: object) -> object:
    if not path:
        return value
    node = root
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    return root


def _with_manifest(header: dict, data: bytes, manifest: dict) -> bytes:
    meta = header["__metadata__"]
    text = json.dumps(manifest)
    meta["hookwrap"] = text
    meta["hookwrap.digest"] = manifest_digest(text)
    return join(header, data)


@st.composite
def mutated(draw: st.DrawFn, raw: bytes, canary: Path) -> tuple[str, bytes]:
    """A mutation of ``raw``: of header bytes, of the manifest's JSON (with a recomputed,
    valid digest, so the change reaches the deeper checks), of a captured hook's graph or
    tree specs, or of the tensor section."""
    kind = draw(st.sampled_from(["header-bytes", "manifest", "manifest", "tensor-table", "data", "length",
                                 "graph", "graph", "tree-spec"]))
    header, data = split(raw)
    if kind in ("graph", "tree-spec"):
        manifest = json.loads(header["__metadata__"]["hookwrap"])
        config = _captured(manifest)
        if kind == "graph":
            n_inputs = config["graph"]["inputs"]
            config["graph"] = draw(hostile_graph(n_inputs) if draw(st.booleans()) else random_graph(n_inputs, canary))
        else:
            config[draw(st.sampled_from(["in_spec", "out_spec"]))] = draw(tree_specs)
        return kind, _with_manifest(header, data, manifest)
    n = struct.unpack("<Q", raw[:8])[0]
    if kind == "header-bytes":
        out = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(8, 8 + n - 1))
            out[pos] = draw(st.integers(0, 255))
        return kind, bytes(out)
    if kind == "length":
        return kind, struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + raw[8:]
    if kind == "manifest":
        meta = header["__metadata__"]
        manifest = json.loads(meta["hookwrap"])
        paths = _paths(manifest)
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from(paths))
            action = draw(st.sampled_from(["replace", "delete", "replace"]))
            if action == "delete" and path:
                parent = manifest
                for key in path[:-1]:
                    parent = parent[key]
                if isinstance(parent, dict):
                    parent.pop(path[-1], None)
                elif isinstance(parent, list) and path[-1] < len(parent):
                    parent.pop(path[-1])
                paths = _paths(manifest)
            else:
                try:
                    manifest = _set(manifest, path, draw(json_values))
                except (KeyError, IndexError, TypeError):
                    pass
                paths = _paths(manifest)
        text = json.dumps(manifest)
        meta["hookwrap"] = text
        meta["hookwrap.digest"] = manifest_digest(text)
        return kind, join(header, data)
    if kind == "tensor-table":
        keys = [k for k in header if k != "__metadata__"]
        key = draw(st.sampled_from(keys))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "name", "drop"]))
        if field == "dtype":
            header[key]["dtype"] = draw(st.sampled_from(["F32", "F16", "I64", "BOOL", "U8", "X9", ""]))
        elif field == "shape":
            header[key]["shape"] = draw(st.lists(st.integers(-2, 70), max_size=4))
        elif field == "data_offsets":
            header[key]["data_offsets"] = draw(st.lists(st.integers(-10, len(data) + 10), min_size=0, max_size=3))
        elif field == "name":
            header[draw(st.text(min_size=1, max_size=10))] = header.pop(key)
        else:
            header.pop(key)
        return kind, join(header, data)
    # data: flip, truncate or extend the tensor section
    action = draw(st.sampled_from(["flip", "truncate", "extend"]))
    if action == "flip" and data:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 16))):
            out[draw(st.integers(0, len(out) - 1))] ^= 1 << draw(st.integers(0, 7))
        data = bytes(out)
    elif action == "truncate":
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    else:
        data = data + draw(st.binary(min_size=1, max_size=64))
    return kind, raw[: 8 + n] + data


def check_case(path: Path, payload: bytes, canary: Path) -> str:
    """Write ``payload``, load it and run what loaded; return "loaded" or "refused", or
    raise AssertionError."""
    path.write_bytes(payload)
    before, files = set(sys.modules), _snapshot(canary)
    base = small_cnn()
    start = time.perf_counter()
    faulthandler.dump_traceback_later(2 * CASE_LIMIT_SECONDS, exit=True)  # a hang ends the run
    try:
        model = hw.load(path, base=base)
        outcome = "loaded"
        for module in model.modules():
            if isinstance(module, W.CapturedHook):
                ops = {node["op"] for node in module.config()["graph"]["nodes"]}
                assert ops <= ALLOWED_OPS | set(_PY_FUNCS), f"a loaded graph holds {sorted(ops - ALLOWED_OPS)}"
        try:
            with torch.no_grad():
                model(torch.randn(2, 3, 10, 10))
        except Exception:  # a nonsensical graph may fail to run; it must still touch nothing
            pass
    except hw.HookwrapError:
        outcome = "refused"
    finally:
        faulthandler.cancel_dump_traceback_later()
    elapsed = time.perf_counter() - start
    new = set(sys.modules) - before
    assert not new, f"loading imported new modules: {sorted(new)}"
    assert _snapshot(canary) == files, "a file in the canary folder appeared or changed"
    assert elapsed < CASE_LIMIT_SECONDS, f"a case took {elapsed:.1f} s"
    return outcome
