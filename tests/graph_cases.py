"""Hostile argument sets for every allowlisted operator of a captured graph, and how to run
one through hookwrap as a loaded file would be run.

A *case* is one operator with arguments drawn from its schema: tensors of every dtype the
decoder accepts (empty ones, 0-d ones, extreme integers, the same tensor twice), integers
from 0 to 2**63-1 and below, special floats, odd size lists, every string mode and a few
bogus ones, and devices. Each tensor is fed to the graph as an input, as a tensor of the
host module, or as a stored constant. :func:`run_case` builds the ``CapturedHook`` a file
would hold (through the same decoding and static check as ``hw.load``), runs it, and
reports what happened and whether anything it must not touch changed.

Used by ``tests/test_graph.py`` (the conformance harness), ``tests/fuzzing.py`` and
``benchmarks/bench_fuzz.py``. Deterministic: a case is a function of (op, index, seed).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import hookwrap as hw
from hookwrap import wrappers as W
from hookwrap._graph import ALLOWED_OPS
from hookwrap._graph_check import DEFAULT_BUDGET

__all__ = ["Case", "make_cases", "all_cases", "base_picks", "run_case", "ops"]

I64_MIN, I64_MAX = -(2**63), 2**63 - 1


_SHAPES: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
    "f32": ((2, 3, 4), torch.float32), "f32_2d": ((3, 4), torch.float32), "f32_sq": ((4, 4), torch.float32),
    "f32_1d": ((4,), torch.float32), "f32_c": ((3,), torch.float32), "f32_3d": ((1, 2, 5), torch.float32),
    "f32_4d": ((1, 2, 5, 5), torch.float32), "f32_w": ((3, 2, 3, 3), torch.float32), "f32_c2": ((2,), torch.float32),
    "f32_w1": ((3, 2, 3), torch.float32), "f32_b": ((2, 4, 4), torch.float32),
    "f32_big": ((64, 64), torch.float32), "f64": ((2, 3, 4), torch.float64),
    "f16": ((2, 3, 4), torch.float16), "bf16": ((2, 3, 4), torch.bfloat16),
}


def _tensor(kind: str) -> torch.Tensor:
    """The tensor a kind names; random values come from a generator seeded by the name, so
    every process makes the same ones."""
    gen = torch.Generator().manual_seed(zlib.crc32(kind.encode()))
    if kind in _SHAPES:
        shape, dtype = _SHAPES[kind]
        return torch.randn(shape, generator=gen).to(dtype)
    fixed = {
        "f32_0d": lambda: torch.tensor(1.5),
        "f32_empty": lambda: torch.empty(0, 3).zero_(),
        "f32_special": lambda: torch.tensor([[float("inf"), float("-inf"), float("nan"), 0.0],
                                             [-0.0, 1e38, -1e-45, 1.0]]),
        "i64_index": lambda: torch.tensor([[0, 1, 2], [2, 1, 0]]),
        "i64_1d": lambda: torch.tensor([1, 0, 2]),
        "i64_extreme": lambda: torch.tensor([[I64_MIN, -1, 0], [I64_MAX, 7, -3]]),
        "i64_minus1": lambda: torch.full((2, 3), -1),
        "i64_4d_min": lambda: torch.tensor([[[[I64_MIN, 0], [0, 0]]]]),
        "i64_huge_index": lambda: torch.tensor([[2**40, -(2**40), 3], [5, -7, 1]]),
        "i32_extreme": lambda: torch.tensor([[-(2**31), -1, 0], [2**31 - 1, 5, -2]], dtype=torch.int32),
        "u8": lambda: torch.randint(0, 255, (2, 3, 4), generator=gen, dtype=torch.uint8),
        "i8": lambda: torch.tensor([[-128, -1, 127], [0, 3, -5]], dtype=torch.int8),
        "bool": lambda: torch.tensor([[True, False, True], [False, False, True]]),
        "bool_3d": lambda: torch.rand(2, 3, 4, generator=gen) < 0.5,
    }
    return fixed[kind]()


ORDINARY_TENSORS: dict[str, tuple[str, ...]] = {
    "weight": ("f32_c", "f32_w", "f32_w1", "f32_2d", "f32_sq", "f32_1d"),
    "bias": ("f32_c", "f32_1d"),
    "index": ("i64_index", "i64_1d"), "indices": ("i64_index", "i64_1d"),
    "mask": ("bool", "bool_3d"),
}
DEFAULT_TENSORS = ("f32", "f32_2d", "f32_sq", "f32_1d", "f32_3d", "f32_4d", "f32_c", "i64_index", "bool_3d")
HOSTILE_TENSORS = ("f32_0d", "f32_empty", "f32_special", "f32_big", "f64", "f16", "bf16", "i64_extreme",
                   "i64_minus1", "i64_huge_index", "i64_4d_min", "i32_extreme", "u8", "i8", "bool", "f32_4d", "f32_1d")
INTS = (0, 1, -1, 2, 3, -4, 7, 2**31, -(2**31), I64_MIN, I64_MAX, 2**20)
NUMBERS = (0, 1, -1, 2, 0.5, -2.5, 2**62, I64_MIN, {"float": "inf"}, {"float": "-inf"}, {"float": "nan"}, True,
           1e308)
FLOATS = (0.0, 0.5, -1.0, 1e-30, 1e308, {"float": "inf"}, {"float": "nan"})
INT_LISTS = ([], [1], [2, 3], [-1], [0], [2, -1], [3, 4, 2], [2**20, 2**20], [1, 1, 1, 1, 1, 1], [-5, -5],
             [1, 2, 0], [4, 3], [0, 1], [2**31, 2], [1, 2, 3, 4, 5, 6, 7, 8], [-1, -1], [-2, -2, -1, -1], [2, -5],
             [-4, -1, 3, -4])
FLOAT_LISTS = ([2.0, 2.0], [1e6, 1e6], [0.5, 0.5], [-1.0, -1.0], [1.0])
STRINGS = {
    "rounding_mode": ("trunc", "floor"),
    "mode": ("constant", "reflect", "replicate", "circular", "bogus"),
    "padding_mode": ("zeros", "reflect"),
    "reduce": ("sum", "prod", "mean", "amax", "amin", "bogus"),
    "approximate": ("none", "tanh", "bogus"),
    "interpolation": ("linear", "lower", "higher", "nearest", "midpoint", "bogus"),
    "equation": ("ij,jk->ik", "i,i->", "bij,bjk->bik", "ii->i", "...ij->...ji", "ab,ab,ab,ab->", "z"),
    "padding": ("same", "valid", "bogus"),
}
DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "uint8", "bool", "int8")
DEVICES = ({"device": "cpu"}, None, {"device": "meta"}, {"device": "cuda"})


def ops() -> list[str]:
    """Every allowlisted aten operator, sorted."""
    return sorted(ALLOWED_OPS)


@dataclass
class Case:
    """One operator call as a graph: ``args``/``kwargs`` in the file's JSON form, with graph
    input ``i`` standing for ``tensors[i]``; ``sources[i]`` says how that tensor reaches the
    graph: ``input`` (an activation), ``host`` (a tensor of the hooked module) or ``const``
    (a constant stored with the wrapper)."""

    op: str
    index: int
    args: list[Any]
    kwargs: dict[str, Any]
    tensors: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    returns: list[str] = field(default_factory=list)
    label: str = ""
    prelude: list[dict] = field(default_factory=list)  # nodes before the op's, referred to as {"p": j}

    @property
    def name(self) -> str:
        return f"{self.op}#{self.index}" + (f" ({self.label})" if self.label else "")


def _overload(op: str) -> Any:
    _, name, overload = op.split(".")
    return getattr(getattr(torch.ops.aten, name), overload)


_DEFAULT = object()


def _choices(arg: Any, hostile: bool) -> list[Any]:
    """The values an argument may take: ``Tensor`` markers (``("tensor", kind)``), JSON values,
    or :data:`_DEFAULT` (leave it out)."""
    kind, name = str(arg.type), arg.name
    optional = kind.startswith("Optional[")
    base = kind[len("Optional["):-1] if optional else kind
    out: list[Any] = [None] if optional else []
    if base == "Tensor":
        pool = HOSTILE_TENSORS if hostile else ORDINARY_TENSORS.get(name, DEFAULT_TENSORS)
        out += [("tensor", k) for k in pool]
    elif base == "List[Tensor]":
        pool = HOSTILE_TENSORS if hostile else DEFAULT_TENSORS[:3]
        out += [("tensors", (k,)) for k in pool] + [("tensors", (k, k)) for k in pool[:3]]
    elif base == "List[Optional[Tensor]]":
        pool = ("i64_index", "i64_1d", "bool") + (("i64_huge_index", "i64_extreme", "f32") if hostile else ())
        out += [("tensors", (k,)) for k in pool] + [("tensors", (None, k)) for k in pool]
    elif base == "int":
        if name == "dtype":
            out += [{"dtype": d} for d in (DTYPES if hostile else DTYPES[:1])]
        elif name == "layout":
            out += [{"layout": "strided"}]
        elif name == "memory_format":
            out += [{"memory_format": m} for m in ("contiguous_format", "preserve_format", "channels_last")]
        else:
            out += list(INTS if hostile else INTS[:5])
    elif base == "number":
        out += list(NUMBERS if hostile else NUMBERS[:6])
    elif base == "bool":
        out += [True, False]
    elif base == "List[int]":
        out += [{"list": v} for v in (INT_LISTS if hostile else INT_LISTS[:7])]
    elif base == "float":
        out += list(FLOATS if hostile else FLOATS[:3])
    elif base == "List[float]":
        out += [{"list": v} for v in FLOAT_LISTS]
    elif base == "str":
        out += list(STRINGS.get(name, ("bogus",)) if hostile else STRINGS.get(name, ("bogus",))[:2])
    elif base == "Device":
        out += list(DEVICES if hostile else DEVICES[:1])
    if arg.has_default_value() and not hostile:
        out = [_DEFAULT, *out]
    return out or [None]


def _build(op: str, index: int, picks: list[Any], label: str = "") -> Case:
    """A case from one choice per schema argument; tensors get graph inputs in order (an
    ``("alias", j)`` pick reuses argument j's tensor) and sources round-robin."""
    schema = _overload(op)._schema
    case = Case(op, index, [], {}, returns=[str(r.type) for r in schema.returns], label=label)
    first_tensor: dict[int, int] = {}
    sources = ("input", "host", "const", "input")

    def tensor(kind: str) -> dict:
        case.tensors.append(kind)
        case.sources.append(sources[(index + len(case.tensors)) % len(sources)])
        return {"n": len(case.tensors) - 1}

    positional = True
    for position, (arg, pick) in enumerate(zip(schema.arguments, picks)):
        if pick is _DEFAULT:
            positional = False
            continue
        if isinstance(pick, tuple) and pick[0] == "tensor":
            value: Any = tensor(pick[1])
            first_tensor[position] = value["n"]
        elif isinstance(pick, tuple) and pick[0] == "tensors":
            value = {"list": [None if k is None else tensor(k) for k in pick[1]]}
        elif isinstance(pick, tuple) and pick[0] == "alias":
            value = {"n": first_tensor[pick[1]]}
        else:
            value = pick
        if arg.kwarg_only or not positional:
            case.kwargs[arg.name] = value
        else:
            case.args.append(value)
    return case


def _loads(case: Case) -> bool:
    """True if the case passes decoding and the static check (no tensor is run)."""
    return run_case(case, static_only=True).status == "checked"


def _t(kind: str) -> tuple[str, str]:
    return ("tensor", kind)


# Ordinary arguments, by name, for the operators whose shapes must fit each other too
# closely for a random search; the rest take their defaults.
BASES: dict[str, dict[str, Any]] = {
    "aten.addmm.default": {"self": _t("f32_1d"), "mat1": _t("f32_2d"), "mat2": _t("f32_sq")},
    "aten.avg_pool2d.default": {"self": _t("f32_4d"), "kernel_size": {"list": [2, 2]}},
    "aten.baddbmm.default": {"self": _t("f32"), "batch1": _t("f32"), "batch2": _t("f32_b")},
    "aten.bmm.default": {"self": _t("f32"), "mat2": _t("f32_b")},
    "aten.conv1d.default": {"input": _t("f32_3d"), "weight": _t("f32_w1")},
    "aten.conv2d.default": {"input": _t("f32_4d"), "weight": _t("f32_w")},
    "aten.dot.default": {"self": _t("f32_1d"), "tensor": _t("f32_1d")},
    "aten.einsum.default": {"equation": "ij,jk->ik", "tensors": ("tensors", ("f32_2d", "f32_sq"))},
    "aten.fill.Tensor": {"self": _t("f32"), "value": _t("f32_0d")},
    "aten.item.default": {"self": _t("f32_0d")},
    "aten.layer_norm.default": {"input": _t("f32"), "normalized_shape": {"list": [4]}},
    "aten.masked_fill.Tensor": {"self": _t("f32"), "mask": _t("bool_3d"), "value": _t("f32_0d")},
    "aten.max_pool2d.default": {"self": _t("f32_4d"), "kernel_size": {"list": [2, 2]}},
    "aten.mm.default": {"self": _t("f32_2d"), "mat2": _t("f32_sq")},
    "aten.rms_norm.default": {"input": _t("f32"), "normalized_shape": {"list": [4]}},
    "aten.scatter_add.default": {"self": _t("f32_2d"), "dim": 0, "index": _t("i64_index"), "src": _t("f32_2d")},
    "aten.split_with_sizes.default": {"self": _t("f32"), "split_sizes": {"list": [1, 2]}, "dim": 1},
    "aten.upsample_nearest2d.vec": {"input": _t("f32_4d"), "output_size": None,
                                    "scale_factors": {"list": [2.0, 2.0]}},
    "aten.where.self": {"condition": _t("bool_3d"), "self": _t("f32"), "other": _t("f32")},
    "aten.instance_norm.default": {"input": _t("f32_4d"), "weight": None, "bias": None, "running_mean": None,
                                   "running_var": None, "use_input_stats": True, "momentum": 0.1, "eps": 1e-5,
                                   "cudnn_enabled": False},
}


def base_picks(op: str, tries: int = 60) -> list[Any] | None:
    """The first ordinary argument choice (seeded by the op's name, or :data:`BASES`) that a
    load accepts, or None: the base that hostile variations change one argument at a time."""
    rng = random.Random(f"base/{op}")
    schema = _overload(op)._schema
    if op in BASES:
        named = BASES[op]
        picks = [named[a.name] if a.name in named else _DEFAULT if a.has_default_value() else None
                 for a in schema.arguments]
        return picks if _loads(_build(op, 0, picks)) else None
    options = [_choices(arg, hostile=False) for arg in schema.arguments]
    for attempt in range(tries):
        picks = [opts[0] if attempt == 0 else rng.choice(opts) for opts in options]
        if _loads(_build(op, 0, picks)):
            return picks
    return None


def make_cases(op: str, seed: int = 0, limit: int | None = None) -> list[Case]:
    """The op's cases: the base argument set, each argument changed to each hostile value
    (a tensor also to an alias of another tensor argument) one at a time, then random
    mixtures; ``limit`` keeps a seeded sample of that many."""
    schema = _overload(op)._schema
    base = base_picks(op)
    rng = random.Random(f"{op}/{seed}")
    variants: list[tuple[list[Any], str]] = []
    if base is not None:
        variants.append((base, "base"))
        tensor_positions = [i for i, p in enumerate(base) if isinstance(p, tuple) and p[0] == "tensor"]
        for i, arg in enumerate(schema.arguments):
            hostile = _choices(arg, hostile=True)
            if str(arg.type) in ("Tensor", "Optional[Tensor]"):
                hostile += [("alias", j) for j in tensor_positions if j < i]
            for value in hostile:
                if value != base[i]:
                    variants.append(([*base[:i], value, *base[i + 1:]], f"{arg.name}={_short(value)}"))
    options = [_choices(arg, hostile=rng.random() < 0.3) for arg in schema.arguments]
    for _ in range(8):
        variants.append(([rng.choice(opts) for opts in options], "mixed"))
    if limit is not None and len(variants) > limit:
        keep = [variants[0]] + rng.sample(variants[1:], limit - 1)
        variants = keep
    return [_build(op, k, picks, label) for k, (picks, label) in enumerate(variants)]


def _short(value: Any) -> str:
    return json.dumps(value, default=str)[:40] if not isinstance(value, tuple) else f"{value[0]}:{value[1]}"


def _graph(case: Case, order: list[int]) -> dict:
    """The case as graph JSON; graph input ``order.index(i)`` is tensor ``i``, and
    ``{"p": j}`` refers to the case's j-th prelude node."""
    n = len(order)

    def remap(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"n"}:
            return {"n": order.index(value["n"])}
        if isinstance(value, dict) and set(value) == {"p"}:
            return {"n": n + value["p"]}
        if isinstance(value, dict) and set(value) == {"list"}:
            return {"list": [remap(v) for v in value["list"]]}
        return value

    nodes = [{"op": p["op"], "args": [remap(a) for a in p["args"]],
              "kwargs": {k: remap(v) for k, v in p.get("kwargs", {}).items()}} for p in case.prelude]
    main = n + len(nodes)
    nodes.append({"op": case.op, "args": [remap(a) for a in case.args],
                  "kwargs": {k: remap(v) for k, v in case.kwargs.items()}})
    outputs: list[Any] = []
    returns = case.returns
    if returns == ["Tensor"]:
        outputs.append({"n": main})
    elif returns and all(r == "Tensor" for r in returns):
        for j in range(len(returns)):
            nodes.append({"op": "operator.getitem", "args": [{"n": main}, j], "kwargs": {}})
            outputs.append({"n": n + len(nodes) - 1})
    elif returns == ["List[Tensor]"]:
        nodes.append({"op": "operator.getitem", "args": [{"n": main}, 0], "kwargs": {}})
        outputs.append({"n": n + len(nodes) - 1})
    elif returns and returns[0] in ("int", "float", "number", "bool", "Scalar"):
        nodes.append({"op": "aten.full.default", "args": [{"list": [1]}, {"n": main}], "kwargs": {}})
        outputs.append({"n": n + len(nodes) - 1})
    return {"version": 1, "inputs": n, "nodes": nodes, "outputs": outputs}


def _attack(op: str, args: list[Any], tensors: list[tuple[str, str]], prelude: list[dict] | None = None,
            kwargs: dict | None = None, label: str = "") -> Case:
    case = Case(op, -1, args, kwargs or {}, [k for k, _ in tensors], [src for _, src in tensors],
                returns=[str(r.type) for r in _overload(op)._schema.returns], label=label)
    case.prelude = prelude or []
    return case


def _meta(dtype: str, fill: Any = 0) -> dict:
    return {"op": "aten.full.default", "args": [{"list": [3]}, fill],
            "kwargs": {"dtype": {"dtype": dtype}, "device": {"device": "meta"}}}


# What the red team did with allowlisted operators (issue 23), as cases the harness always
# runs besides the generated ones: each must be refused at load or run keeping the promises.
def attacks() -> list[Case]:
    """The red team's cases, numbered after the generated ones of their operator."""
    return [
        _attack("aten.index_select.default", [{"n": 0}, 0, {"p": 0}], [("f32", "input")], [_meta("int64")],
                label="meta index"),
        _attack("aten.gather.default", [{"n": 0}, 0, {"p": 0}], [("f32_1d", "input")], [_meta("int64")],
                label="meta index"),
        _attack("aten.embedding.default", [{"n": 0}, {"p": 0}], [("f32_2d", "host")], [_meta("int64")],
                label="meta index"),
        _attack("aten.fill.Tensor", [{"n": 0}, {"p": 0}], [("f32", "input")],
                [{"op": "aten.full.default", "args": [{"list": []}, 1.0], "kwargs": {"device": {"device": "meta"}}}],
                label="meta value"),
        _attack("aten.index.Tensor", [{"n": 0}, {"list": [{"p": 0}]}], [("f32", "input")], [_meta("int64")],
                label="meta index"),
        _attack("aten.pad.default", [{"n": 0}, {"list": [2, -5]}, "circular"], [("f32_3d", "input")],
                label="circular, negative"),
        _attack("aten.pad.default", [{"n": 0}, {"list": [-4, -1, 3, -4]}, "circular"], [("f32_4d", "input")],
                label="circular, negative 2d"),
        _attack("aten.instance_norm.default", [{"n": 0}, None, None, {"n": 1}, {"n": 2}, True, 0.1, 1e-5, False],
                [("f32_4d", "input"), ("f32_c2", "host"), ("f32_c2", "host")], label="running stats of the host"),
        _attack("aten.instance_norm.default", [{"n": 0}, None, None, {"p": 0}, {"p": 1}, True, 0.1, 1e-5, False],
                [("f32_4d", "input"), ("f32_c2", "host"), ("f32_c2", "const")],
                [{"op": "aten.detach.default", "args": [{"n": 1}]}, {"op": "aten.detach.default", "args": [{"n": 2}]}],
                label="running stats through detach"),
        _attack("aten.div.Tensor_mode", [{"n": 0}, {"n": 1}], [("i64_extreme", "input"), ("i64_minus1", "input")],
                kwargs={"rounding_mode": "trunc"}, label="INT64_MIN / -1"),
        _attack("aten.div.Scalar_mode", [{"n": 0}, -1], [("i64_extreme", "input")],
                kwargs={"rounding_mode": "floor"}, label="INT64_MIN / -1"),
        _attack("aten.floor_divide.default", [{"n": 0}, {"n": 1}], [("i64_extreme", "input"), ("i64_minus1", "const")],
                label="INT64_MIN // -1"),
        _attack("aten.remainder.Tensor", [{"n": 0}, {"n": 1}], [("i64_extreme", "input"), ("i64_minus1", "input")],
                label="INT64_MIN % -1"),
        _attack("aten.fmod.Scalar", [{"n": 0}, -1], [("i64_extreme", "input")], label="fmod(INT64_MIN, -1)"),
        _attack("aten.avg_pool2d.default", [{"n": 0}, {"list": [2, 2]}, {"list": []}, {"list": [0, 0]}, False, True, -1],
                [("i64_4d_min", "input")], label="integer, INT64_MIN / -1"),
        _attack("aten.detach.default", [{"n": 0}], [("f32_2d", "host")], label="a host tensor as output"),
        _attack("aten.view.default", [{"n": 0}, {"list": [-1]}], [("f32_2d", "const")], label="a constant as output"),
        _attack("aten.slice.Tensor", [{"n": 0}, 0, 0, 1], [("f32_2d", "input")], label="a view of the input"),
        _attack("aten.zeros.default", [{"list": [2**16, 2**16]}], [], label="a 16 GiB constant size"),
        _attack("aten.full.default", [{"list": [2**40]}, 1.0], [], label="2**40 elements"),
        _attack("aten.arange.default", [2**40], [], label="arange(2**40)"),
        _attack("aten.linspace.default", [0, 1, 2**33], [], label="linspace steps"),
        _attack("aten.repeat.default", [{"n": 0}, {"list": [2**14, 2**14]}], [("f32_2d", "input")],
                label="repeats from the file"),
        _attack("aten.upsample_nearest2d.vec", [{"n": 0}, None, {"list": [2e4, 2e4]}], [("f32_4d", "input")],
                label="upsampling scale from the file"),
        _attack("aten.new_zeros.default", [{"n": 0}, {"list": [{"p": 1}, {"p": 1}]}], [("f32_2d", "input")],
                [{"op": "aten.sym_size.int", "args": [{"n": 0}, 0]}, {"op": "operator.mul", "args": [{"p": 0}, 2**15]}],
                label="size arithmetic from the file"),
    ]


@dataclass
class Outcome:
    """What running a case did: ``status`` is ``refused`` (at load: decode or the static
    check), ``error`` (a HookwrapError when run), ``ran``; ``digest`` hashes the outputs;
    ``violations`` lists broken promises."""

    status: str
    digest: str = ""
    detail: str = ""
    violations: list[str] = field(default_factory=list)


def _bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def run_case(case: Case, *, static_only: bool = False) -> Outcome:
    """Build the case's CapturedHook as a load would (decode, static check), run it on its
    tensors, and check the four promises that this process can see: nothing it was given
    changed, no output aliases what it was given, every failure is a HookwrapError. (The
    caller compares digests across processes and watches for signals.) With
    ``static_only``, stop after the load's checks: ``checked`` if it passed them."""
    tensors = [_tensor(kind) for kind in case.tensors]
    order = [i for s in ("input", "host", "const") for i, src in enumerate(case.sources) if src == s]
    inputs = [i for i in order if case.sources[i] == "input"]
    hosts = [i for i in order if case.sources[i] == "host"]
    consts = [i for i in order if case.sources[i] == "const"]
    host = nn.Module()
    for k, i in enumerate(hosts):
        host.register_buffer(f"h{k}", tensors[i])
    graph = _graph(case, order)
    n_out = len(graph["outputs"])
    config = {
        "graph": graph, "position": "post", "with_kwargs": False,
        "in_spec": {"tuple": [{"tuple": []}, {"tuple": [None] * len(inputs)}]},
        "in_template": [W.TENSOR] * len(inputs),
        "out_spec": {"tuple": [None] * n_out}, "out_template": [W.TENSOR] * n_out,
        "host_tensors": [f"h{k}" for k in range(len(hosts))],
        "constants": {f"c{k}": {"dtype": str(tensors[i].dtype).removeprefix("torch."),
                                "shape": list(tensors[i].shape)} for k, i in enumerate(consts)},
        "input_dims": [list(tensors[i].shape) for i in inputs],
        "symbols": {},
        "input_dtypes": [str(tensors[i].dtype).removeprefix("torch.") for i in inputs],
        "name": case.name,
    }
    try:
        wrapper = W.build_wrapper({"type": "CapturedHook", "config": config})
        assert isinstance(wrapper, W.CapturedHook)
        with torch.no_grad():
            for k, i in enumerate(consts):
                getattr(wrapper, f"c{k}").copy_(tensors[i])
        wrapper.check_graph(host, budget=DEFAULT_BUDGET)
    except hw.HookwrapError as exc:
        return Outcome("refused", detail=str(exc)[:200])
    except Exception as exc:
        return Outcome("refused", detail=repr(exc)[:200], violations=[f"load raised {type(exc).__name__}: {exc}"[:300]])
    if static_only:
        return Outcome("checked")
    given = [tensors[i] for i in inputs]
    watched = [("input", tensors[i]) for i in inputs] + [("host", getattr(host, f"h{k}")) for k in range(len(hosts))] \
        + [("const", getattr(wrapper, f"c{k}")) for k in range(len(consts))]
    before = [_bytes(t) for _, t in watched]
    outcome: Outcome
    torch.manual_seed(0)
    try:
        with torch.no_grad():
            result = wrapper.hookwrap_post(host, (), {}, tuple(given))
    except hw.HookwrapError as exc:
        outcome = Outcome("error", detail=str(exc)[:200])
        result = None
    except Exception as exc:
        outcome = Outcome("error", detail=repr(exc)[:200],
                          violations=[f"running raised {type(exc).__name__}, not a HookwrapError: {exc}"[:300]])
        result = None
    else:
        outcome = Outcome("ran")
    for (what, t), old in zip(watched, before):
        if _bytes(t) != old:
            outcome.violations.append(f"an {what} tensor changed")
    if result is not None:
        digest = hashlib.sha256()
        for out in result:
            if not isinstance(out, torch.Tensor):
                continue
            digest.update(f"{out.dtype}{list(out.shape)}".encode())
            digest.update(_bytes(out))
            if out.numel():
                ptr = out.untyped_storage().data_ptr()
                for what, t in watched:
                    if t.numel() and t.untyped_storage().data_ptr() == ptr and not (what == "input" and out is t):
                        outcome.violations.append(f"an output shares memory with an {what} tensor")
        outcome.digest = digest.hexdigest()[:16]
    return outcome


def all_cases(seed: int, limit: int | None, only: str = "") -> list[Case]:
    """The red team's cases, then every op's generated cases (or those of the
    comma-separated ops in ``only``), in a fixed order."""
    chosen = [op for op in ops() if not only or op in only.split(",")]
    return [c for c in attacks() if c.op in chosen] + [case for op in chosen for case in make_cases(op, seed, limit)]


def main(argv: list[str]) -> None:
    """The harness's child: ``graph_cases.py SEED LIMIT START [OPS]`` runs the cases from
    number START on (LIMIT per op, 0 for all; OPS a comma-separated choice), printing a
    JSON line when each starts and ends, so that the parent knows which case a signal
    ended. The parent sets MALLOC_PERTURB_."""
    seed, limit, start = (int(a) for a in argv[:3])
    torch.set_num_threads(1)
    cases = all_cases(seed, limit or None, argv[3] if len(argv) > 3 else "")
    print(json.dumps({"total": len(cases)}), flush=True)
    for k in range(start, len(cases)):
        case = cases[k]
        print(json.dumps({"k": k, "start": case.name}), flush=True)
        outcome = run_case(case)
        print(json.dumps({"k": k, "status": outcome.status, "digest": outcome.digest,
                          "violations": outcome.violations, "detail": outcome.detail}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
