"""The inputs of a parity check, as numpy arrays that fit the ONNX model's signature.

They come from one of four places: the user's example (plus random sets drawn like it),
a list of sets given as they are, an ``.npz`` file, or, failing all of these, the ONNX
signature itself. numpy only: the torch-free parity gate uses this module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidArgumentError

__all__ = ["Signature", "InputSets", "signature", "load_inputs", "from_npz", "from_given", "from_example",
           "from_signature", "interface", "interface_differences", "read_interface"]

_ONNX_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class Signature:
    """The ONNX model's inputs: names, shapes (``None`` for symbolic dimensions), dtypes."""

    names: list[str]
    shapes: list[list[int | None]]
    dtypes: list[Any]

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.shapes) and bool(self.shapes[0]) and self.shapes[0][0] is None

    def check(self, arrays: Sequence[Any], where: str) -> None:
        """Raise ``InvalidArgumentError`` unless ``arrays`` (anything with ``shape``, ``ndim``
        and ``dtype``: arrays, or what an ``.npy`` header declares) fit the signature."""
        if len(arrays) != len(self.names):
            raise InvalidArgumentError(
                f"{where}: {len(arrays)} input(s) given, the ONNX model takes {len(self.names)} {self.names}")
        for array, name, shape, dtype in zip(arrays, self.names, self.shapes, self.dtypes):
            if dtype is not None and array.dtype != dtype:
                raise InvalidArgumentError(
                    f"{where}: input {name!r} is {array.dtype}, the ONNX model expects {np.dtype(dtype)}")
            if array.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, array.shape)):
                want = ["?" if s is None else s for s in shape]
                raise InvalidArgumentError(
                    f"{where}: input {name!r} has shape {list(array.shape)}, the ONNX model expects {want}")


def signature(session: Any) -> Signature:
    """The input signature of an onnxruntime session."""
    args = session.get_inputs()
    return Signature([a.name for a in args], [[d if isinstance(d, int) else None for d in a.shape] for a in args],
                     [_ONNX_TYPES.get(a.type) for a in args])


def interface(session: Any) -> dict[str, list[dict[str, Any]]]:
    """An ONNX model's interface as JSON: per input and output, its name, element type and
    shape (``None`` for a dynamic axis). A golden file binds it; ``check --golden`` compares."""
    def describe(args: Any) -> list[dict[str, Any]]:
        return [{"name": a.name, "type": a.type, "shape": [d if isinstance(d, int) else None for d in a.shape]}
                for a in args]

    return {"inputs": describe(session.get_inputs()), "outputs": describe(session.get_outputs())}


def read_interface(value: Any, where: str) -> dict[str, list[dict[str, Any]]]:
    """Check an interface read from a file (bounded, every field typed).

    Raises:
        InvalidArgumentError: it is not what :func:`interface` writes.
    """
    ok = isinstance(value, dict) and set(value) == {"inputs", "outputs"}
    for side in ("inputs", "outputs") if ok else ():
        entries = value[side]
        ok = ok and isinstance(entries, list) and len(entries) <= 1000 and all(
            isinstance(e, dict) and set(e) == {"name", "type", "shape"} and isinstance(e["name"], str)
            and len(e["name"]) <= 1000 and isinstance(e["type"], str) and len(e["type"]) <= 100
            and isinstance(e["shape"], list) and len(e["shape"]) <= 64
            and all(d is None or (isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63) for d in e["shape"])
            for e in entries)
    if not ok:
        raise InvalidArgumentError(f"{where}: the recorded interface is damaged")
    return value


def interface_differences(bound: dict[str, list[dict[str, Any]]], got: dict[str, list[dict[str, Any]]]) -> list[str]:
    """How ``got`` (an ONNX model's interface) departs from ``bound`` (the one a golden file
    was recorded against): renamed, added or missing inputs and outputs, other element
    types or ranks, other fixed sizes, and dynamic axes that became fixed. Empty if none."""
    out = []
    for side in ("inputs", "outputs"):
        want = [e["name"] for e in bound[side]]
        have = [e["name"] for e in got[side]]
        if want != have:
            missing = [n for n in want if n not in have]
            added = [n for n in have if n not in want]
            what = "; ".join(x for x in (f"missing {missing}" if missing else "", f"added {added}" if added else "")
                             if x) or "in another order"
            out.append(f"{side[:-1]} names {have} against the recorded {want} ({what})")
            continue
        for w, h in zip(bound[side], got[side]):
            if w["type"] != h["type"]:
                out.append(f"{side[:-1]} {w['name']!r} is {h['type']}, recorded {w['type']}")
            elif len(w["shape"]) != len(h["shape"]):
                out.append(f"{side[:-1]} {w['name']!r} has rank {len(h['shape'])}, recorded {len(w['shape'])}")
            else:
                for axis, (a, b) in enumerate(zip(w["shape"], h["shape"])):
                    if a is None and b is not None:
                        out.append(f"axis {axis} of {side[:-1]} {w['name']!r} was dynamic and is fixed at {b} "
                                   f"(an export without the dynamic axis)")
                    elif a is not None and a != b:
                        out.append(f"axis {axis} of {side[:-1]} {w['name']!r} is {'dynamic' if b is None else b}, "
                                   f"recorded {a}")
    return out


@dataclass(frozen=True)
class InputSets:
    """Input sets (tuples of arrays in ONNX input order) and where each came from."""

    sets: list[tuple[np.ndarray, ...]]
    sources: list[str]

    def describe(self) -> list[dict[str, Any]]:
        return [{"index": i, "source": src, "shapes": [list(a.shape) for a in s], "dtypes": [str(a.dtype) for a in s]}
                for i, (s, src) in enumerate(zip(self.sets, self.sources))]


def load_inputs(path: str | os.PathLike[str], names: Sequence[str]) -> list[tuple[np.ndarray, ...]]:
    """Input sets from an ``.npz`` file (never unpickled).

    Keys are either the model's input names (one set), ``"<k>/<name>"`` for several
    sets, or ``arr_0``, ``arr_1``, ... in input order (what ``np.savez(f, x)`` writes).

    Raises:
        InvalidArgumentError: the file cannot be read or its keys do not fit the model.
    """
    from ._npz import read_npz

    p = Path(path)
    arrays = read_npz(p, what="inputs file")
    if not arrays:
        raise InvalidArgumentError(f"inputs file {p.name!r} holds no arrays")
    names = list(names)
    if set(arrays) == set(names):
        return [tuple(arrays[n] for n in names)]
    positional = [f"arr_{i}" for i in range(len(names))]
    if set(arrays) == set(positional):
        return [tuple(arrays[k] for k in positional)]
    sets: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        group, sep, name = key.partition("/")
        if not sep or name not in names:
            raise InvalidArgumentError(
                f"inputs file {p.name!r} has key {key!r}; expected the model's input names {names}, "
                f"'<k>/<name>' keys, or arr_0..arr_{len(names) - 1}")
        sets.setdefault(group, {})[name] = value
    out = []
    for group in sorted(sets, key=lambda g: (len(g), g)):
        missing = [n for n in names if n not in sets[group]]
        if missing:
            raise InvalidArgumentError(f"inputs file {p.name!r}: set {group!r} lacks input(s) {missing}")
        out.append(tuple(sets[group][n] for n in names))
    return out


def from_npz(path: str | os.PathLike[str], sig: Signature) -> InputSets:
    sets = load_inputs(path, sig.names)
    for i, s in enumerate(sets):
        sig.check(s, f"inputs file set {i}")
    return InputSets(sets, [f"npz[{i}]" for i in range(len(sets))])


def from_given(sets: list[tuple[np.ndarray, ...]], sig: Signature) -> InputSets:
    for i, s in enumerate(sets):
        sig.check(s, f"inputs[{i}]")
    return InputSets(list(sets), [f"given[{i}]" for i in range(len(sets))])


def _random_like(example: tuple[np.ndarray, ...], rng: np.random.Generator, new_batch: int | None) -> tuple:
    out = []
    batch = example[0].shape[0] if example and example[0].ndim else None
    for ex in example:
        shape = list(ex.shape)
        if new_batch is not None and shape and shape[0] == batch:
            shape[0] = new_batch
        if np.issubdtype(ex.dtype, np.floating):
            std = float(ex.std()) if ex.size > 1 and float(ex.std()) > 0 else 1.0
            mean = float(ex.mean()) if ex.size else 0.0
            out.append((rng.standard_normal(shape) * std + mean).astype(ex.dtype))
        elif ex.dtype == np.bool_:
            out.append(rng.random(shape) < 0.5)
        elif np.issubdtype(ex.dtype, np.integer):
            lo, hi = (int(ex.min()), int(ex.max())) if ex.size else (0, 1)
            out.append(rng.integers(lo, hi + 1, size=shape).astype(ex.dtype))
        else:
            raise InvalidArgumentError(f"cannot generate random inputs of dtype {ex.dtype}; pass inputs explicitly")
    return tuple(out)


def from_example(example: tuple[np.ndarray, ...], sig: Signature, *, seed: int, random_inputs: int,
                 source: str = "example") -> InputSets:
    """The example, then ``random_inputs`` sets drawn like it with ``seed`` (the last one
    at another batch size when the ONNX batch is dynamic)."""
    sig.check(example, source)
    rng = np.random.default_rng(seed)
    batch = example[0].shape[0] if example and example[0].ndim else None
    sets, sources = [example], [source]
    for k in range(random_inputs):
        other = batch + 2 if (sig.dynamic_batch and batch is not None and k == random_inputs - 1) else None
        sets.append(_random_like(example, rng, other))
        sources.append(f"random (seed {seed}, #{k}){'' if other is None else f', batch {other}'}")
    return InputSets(sets, sources)


def from_signature(sig: Signature, *, seed: int, random_inputs: int) -> InputSets:
    """Inputs made from the ONNX signature alone (symbolic dimensions become 2)."""
    rng = np.random.default_rng(12345)
    example = []
    for name, shape, dtype in zip(sig.names, sig.shapes, sig.dtypes):
        dims = [2 if s is None else s for s in shape]
        if dtype is None:
            raise InvalidArgumentError(f"ONNX input {name!r} has a type hookwrap cannot generate; pass inputs")
        if np.issubdtype(dtype, np.floating):
            example.append(rng.standard_normal(dims).astype(dtype))
        elif dtype == np.bool_:
            example.append(rng.random(dims) < 0.5)
        else:
            example.append(rng.integers(0, 10, size=dims).astype(dtype))
    return from_example(tuple(example), sig, seed=seed, random_inputs=random_inputs,
                        source="generated from the ONNX signature")
