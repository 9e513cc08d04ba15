"""Prove that an ONNX file computes what the original, hooked eager model computes.

The reference is always the eager model you pass, hooks and all, in eval mode. One
onnxruntime session is reused for every input.

**Deterministic models** are compared per output, element by element, with the
``numpy.allclose`` rule: a value passes when ``|onnx - ref| <= atol + rtol * |ref|``;
NaNs must sit in the same places and infinities must match exactly; shapes and dtypes
must be equal. Each comparison reports the max and mean absolute difference, the max
relative difference (over non-zero reference values), the fraction of values that fail
and ``required_atol``: the smallest ``atol`` that would have passed at this ``rtol``.

**Stochastic models** (the reference gives different outputs under two different
seeds, or the ONNX graph holds random operators: either is enough) are compared
statistically. The second reference run is skipped when the first one ran no operator
that draws from torch's RNG, since its outputs then cannot depend on the seed
(randomness from outside torch, such as ``numpy.random`` in a hook, is not seeded and not
detected: such a model fails the exact comparison). For each input, ``samples`` reference runs, ``samples`` onnxruntime runs
and ``max(samples // 2, 8)`` further reference runs (the *anchor*, used only to compute
a centre ``c``, the anchor mean) are made, each with fresh randomness. Every run ``y`` is
reduced to three numbers: its RMS distance to ``c``, its mean offset from ``c``, and its
projection on a fixed random sign vector. Under the hypothesis that both sides draw from
the same distribution, these numbers are i.i.d. and exchangeable between the two sides,
so a two-sample Kolmogorov-Smirnov test is valid for each of them without further
assumptions. The check fails if any test's p-value is below
``alpha / (inputs x outputs x 3)`` (Bonferroni), which bounds the probability of a false
alarm for the whole check by ``alpha`` (default 0.002, so at most 0.2%, within the
contract's 1%). A lost dropout (the ONNX side no longer varies) or a different dropout
rate (a different spread) moves the distance statistic and fails.

JSON report schema (``ParityReport.to_dict()``)::

    {"passed": bool, "mode": "exact" | "statistical", "onnx": str, "atol": float,
     "rtol": float, "alpha": float | null, "samples": int | null, "seed": int,
     "stochastic_reference": bool, "random_ops": {op: count}, "seconds": float,
     "inputs": [{"index": int, "source": str, "shapes": [[int]], "dtypes": [str]}],
     "checks": [{"input": int, "output": str, "output_index": int, "mode": str,
                 "passed": bool, "message": str, "reference_shape": [int],
                 "onnx_shape": [int] | null, "reference_dtype": str, "onnx_dtype": str | null,
                 "max_abs_diff": float | null, "mean_abs_diff": float | null,
                 "max_rel_diff": float | null, "mismatch_fraction": float | null,
                 "required_atol": float | null, "nan_mismatch": int,
                 "p_value": float | null, "alpha_per_test": float | null,
                 "statistics": {name: float}}],
     "notes": [str], "summary": str}
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils import _pytree

from ._fs import atomic_write_text
from ._onnx import open_session, random_ops_of, read_onnx
from ._torch import eval_mode
from ._txn import preserved
from .errors import InvalidArgumentError, ParityError

__all__ = ["check_parity", "assert_parity", "ParityReport", "OutputCheck", "load_inputs"]

DEFAULT_ALPHA = 0.002
DEFAULT_SAMPLES = 32
_STAT_NAMES = ("rms_distance", "mean_offset", "projection")

_ONNX_TO_NUMPY = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
    9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
}


@dataclass
class OutputCheck:
    """The comparison of one output for one input."""

    input: int
    output: str
    output_index: int
    mode: str
    passed: bool
    message: str
    reference_shape: list[int]
    onnx_shape: list[int] | None
    reference_dtype: str
    onnx_dtype: str | None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    max_rel_diff: float | None = None
    mismatch_fraction: float | None = None
    required_atol: float | None = None
    nan_mismatch: int = 0
    p_value: float | None = None
    alpha_per_test: float | None = None
    statistics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("seconds")
        return {k: _json_number(v) for k, v in data.items()}


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_number(v) for k, v in value.items()}
    return value


@dataclass
class ParityReport:
    """The result of :func:`check_parity`. Truthy if and only if every check passed."""

    passed: bool
    mode: str
    onnx: str
    atol: float
    rtol: float
    seed: int
    checks: list[OutputCheck]
    inputs: list[dict[str, Any]]
    stochastic_reference: bool
    random_ops: dict[str, int]
    alpha: float | None = None
    samples: int | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    bisect: Any = None

    def __bool__(self) -> bool:
        return self.passed

    def failures(self) -> list[OutputCheck]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        n_in = len(self.inputs)
        n_out = len({c.output for c in self.checks})
        head = f"parity {'PASSED' if self.passed else 'FAILED'}: {n_in} input(s) x {n_out} output(s), {self.mode}"
        if self.mode == "exact":
            worst = max((c.max_abs_diff or 0.0 for c in self.checks), default=0.0)
            head += f", max |diff| {worst:.3g} (atol {self.atol:g}, rtol {self.rtol:g})"
        else:
            head += f", {self.samples} draws per side (alpha {self.alpha:g})"
        bad = self.failures()
        if bad:
            first = bad[0]
            head += f"; first failure: input {first.input}, output {first.output!r}: {first.message}"
        return head

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "mode": self.mode, "onnx": self.onnx, "atol": self.atol, "rtol": self.rtol,
            "alpha": self.alpha, "samples": self.samples, "seed": self.seed,
            "stochastic_reference": self.stochastic_reference, "random_ops": dict(self.random_ops),
            "seconds": round(self.seconds, 3), "inputs": self.inputs,
            "checks": [c.to_dict() for c in self.checks], "notes": list(self.notes), "summary": self.summary(),
            **({"bisect": self.bisect.to_dict()} if self.bisect is not None else {}),
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int = 2) -> str:
        """The report as JSON (schema in this module's docstring); written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    def to_junit(self, path: str | os.PathLike[str], *, suite: str = "hookwrap.parity") -> None:
        """Write JUnit XML: one testcase per input and output, a ``<failure>`` with the
        statistics for each failing one."""
        failures = len(self.failures())
        root = ET.Element("testsuites", name=suite, tests=str(len(self.checks)), failures=str(failures),
                          errors="0", time=f"{self.seconds:.3f}")
        ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(self.checks)), failures=str(failures),
                           errors="0", skipped="0", time=f"{self.seconds:.3f}")
        props = ET.SubElement(ts, "properties")
        for key in ("onnx", "mode", "atol", "rtol", "alpha", "samples", "seed"):
            ET.SubElement(props, "property", name=key, value=str(getattr(self, key)))
        classname = f"{suite}.{Path(self.onnx).stem}"
        for check in self.checks:
            case = ET.SubElement(ts, "testcase", classname=classname,
                                 name=f"input[{check.input}].{check.output}", time=f"{check.seconds:.3f}")
            if not check.passed:
                failure = ET.SubElement(case, "failure", message=check.message, type="ParityMismatch")
                failure.text = "\n".join(
                    f"{k}: {v}" for k, v in check.to_dict().items() if k not in ("message", "passed")
                )
        ET.indent(root)
        atomic_write_text(path, ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")

    def rows(self) -> list[list[str]]:
        """Table rows for people (header first)."""
        if self.mode == "exact":
            rows = [["input", "output", "result", "max |diff|", "mean |diff|", "max rel", "mismatch", "needs atol"]]
            for c in self.checks:
                rows.append([str(c.input), c.output, "ok" if c.passed else "FAIL", _fmt(c.max_abs_diff),
                             _fmt(c.mean_abs_diff), _fmt(c.max_rel_diff), _pct(c.mismatch_fraction),
                             _fmt(c.required_atol)])
        else:
            rows = [["input", "output", "result", "min p", "alpha/test", "spread ratio", "|mean diff|"]]
            for c in self.checks:
                rows.append([str(c.input), c.output, "ok" if c.passed else "FAIL", _fmt(c.p_value),
                             _fmt(c.alpha_per_test), _fmt(c.statistics.get("spread_ratio")), _fmt(c.max_abs_diff)])
        return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


@dataclass
class _Signature:
    names: list[str]
    shapes: list[list[int | None]]
    dtypes: list[Any]


def _signature(session: Any) -> _Signature:
    names, shapes, dtypes = [], [], []
    type_map = {
        "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
        "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
        "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
    }
    for arg in session.get_inputs():
        names.append(arg.name)
        shapes.append([d if isinstance(d, int) else None for d in arg.shape])
        dtypes.append(type_map.get(arg.type))
    return _Signature(names, shapes, dtypes)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


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


def _check_against_signature(arrays: tuple[np.ndarray, ...], sig: _Signature, where: str) -> None:
    if len(arrays) != len(sig.names):
        raise InvalidArgumentError(f"{where}: {len(arrays)} input(s) given, the ONNX model takes {len(sig.names)} {sig.names}")
    for array, name, shape, dtype in zip(arrays, sig.names, sig.shapes, sig.dtypes):
        if dtype is not None and array.dtype != dtype:
            raise InvalidArgumentError(f"{where}: input {name!r} is {array.dtype}, the ONNX model expects {np.dtype(dtype)}")
        if array.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, array.shape)):
            want = ["?" if s is None else s for s in shape]
            raise InvalidArgumentError(f"{where}: input {name!r} has shape {list(array.shape)}, "
                                       f"the ONNX model expects {want}")


def _random_like(example: list[np.ndarray], rng: np.random.Generator, batch: int | None,
                 new_batch: int | None) -> list[np.ndarray]:
    out = []
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
    return out


def _from_signature(sig: _Signature) -> list[np.ndarray]:
    rng = np.random.default_rng(12345)
    out = []
    for name, shape, dtype in zip(sig.names, sig.shapes, sig.dtypes):
        dims = [2 if s is None else s for s in shape]
        if dtype is None:
            raise InvalidArgumentError(f"ONNX input {name!r} has a type hookwrap cannot generate; pass inputs")
        if np.issubdtype(dtype, np.floating):
            out.append(rng.standard_normal(dims).astype(dtype))
        elif dtype == np.bool_:
            out.append(rng.random(dims) < 0.5)
        else:
            out.append(rng.integers(0, 10, size=dims).astype(dtype))
    return out


def _input_sets(inputs: Any, sig: _Signature, *, seed: int, random_inputs: int) -> tuple[list[tuple], list[str], Any]:
    """(input sets as tuples of numpy arrays, their sources, the pytree spec for the reference)."""
    spec = None
    if isinstance(inputs, (str, os.PathLike)):
        sets = load_inputs(inputs, sig.names)
        for i, s in enumerate(sets):
            _check_against_signature(s, sig, f"inputs file set {i}")
        return sets, [f"npz[{i}]" for i in range(len(sets))], None
    if inputs is None:
        example = _from_signature(sig)
        sources = ["generated from the ONNX signature"]
    elif isinstance(inputs, list):
        if not inputs or not all(isinstance(s, tuple) for s in inputs):
            raise InvalidArgumentError("inputs must be a tuple (one example), a list of tuples, or a path to an .npz")
        sets = []
        for i, s in enumerate(inputs):
            leaves, spec_i = _pytree.tree_flatten(s)
            spec = spec if spec is not None else spec_i
            arrays = tuple(_to_numpy(v) for v in leaves)
            _check_against_signature(arrays, sig, f"inputs[{i}]")
            sets.append(arrays)
        return sets, [f"given[{i}]" for i in range(len(sets))], spec
    elif isinstance(inputs, tuple):
        leaves, spec = _pytree.tree_flatten(inputs)
        example = [_to_numpy(v) for v in leaves]
        sources = ["example"]
    else:
        raise InvalidArgumentError(
            f"inputs must be a tuple (one example), a list of tuples, or a path to an .npz; got {type(inputs).__name__}")
    _check_against_signature(tuple(example), sig, "example")
    rng = np.random.default_rng(seed)
    batch = example[0].shape[0] if example and example[0].ndim else None
    dynamic = bool(sig.shapes) and bool(sig.shapes[0]) and sig.shapes[0][0] is None
    sets = [tuple(example)]
    for k in range(random_inputs):
        other = batch + 2 if (dynamic and batch is not None and k == random_inputs - 1) else None
        sets.append(tuple(_random_like(example, rng, batch, other)))
        sources.append(f"random (seed {seed}, #{k}){'' if other is None else f', batch {other}'}")
    return sets, sources, spec


# --------------------------------------------------------------------------------------
# Running both sides
# --------------------------------------------------------------------------------------


class _SeededOps:
    """Notes the aten operators run that draw from torch's RNG (``nondeterministic_seeded``)."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        seen: set[str] = set()

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
                if torch.Tag.nondeterministic_seeded in func.tags:
                    seen.add(str(func))
                return func(*args, **(kwargs or {}))

        self.seen = seen
        self.mode = Mode()


def _reference_outputs(model: nn.Module, arrays: tuple, spec: Any, seed: int | None,
                       watch: _SeededOps | None = None) -> list[np.ndarray]:
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    args = _pytree.tree_unflatten(tensors, spec) if spec is not None else tuple(tensors)
    with torch.random.fork_rng(devices=[]), torch.no_grad(), (watch.mode if watch else contextlib.nullcontext()):
        if seed is not None:
            torch.manual_seed(seed)
        out = model(*args)
    return [v.detach().cpu().numpy() for v in _pytree.tree_leaves(out) if isinstance(v, Tensor)]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))


def _compare_exact(ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    out: dict[str, Any] = {"nan_mismatch": 0}
    if ref.shape != got.shape:
        out["message"] = f"shape mismatch: reference {list(ref.shape)}, onnx {list(got.shape)}"
        return out
    if ref.dtype != got.dtype:
        out["message"] = f"dtype mismatch: reference {ref.dtype}, onnx {got.dtype}"
        return out
    r, g = ref.astype(np.float64), got.astype(np.float64)
    nan_r, nan_g = np.isnan(r), np.isnan(g)
    out["nan_mismatch"] = int((nan_r != nan_g).sum())
    both = ~(nan_r | nan_g)
    inf = both & (np.isinf(r) | np.isinf(g))
    inf_bad = inf & (r != g)
    fin = both & ~inf
    diff = np.abs(g[fin] - r[fin])
    mag = np.abs(r[fin])
    bad = diff > atol + rtol * mag
    n = ref.size
    failing = int(bad.sum()) + int(inf_bad.sum()) + out["nan_mismatch"]
    out["max_abs_diff"] = float(diff.max()) if diff.size else 0.0
    out["mean_abs_diff"] = float(diff.mean()) if diff.size else 0.0
    nz = mag > 0
    out["max_rel_diff"] = float((diff[nz] / mag[nz]).max()) if nz.any() else 0.0
    out["mismatch_fraction"] = failing / n if n else 0.0
    out["required_atol"] = float(max(0.0, (diff - rtol * mag).max())) if diff.size else 0.0
    if failing == 0:
        out["passed"] = True
        out["message"] = "ok"
    else:
        parts = []
        if bad.any():
            parts.append(f"{int(bad.sum())} of {n} values ({100 * bad.sum() / n:.3g}%) outside "
                         f"|onnx-ref| <= {atol:g} + {rtol:g}*|ref|, max |diff| {out['max_abs_diff']:.3g}; "
                         f"would pass with atol >= {out['required_atol']:.3g}")
        if out["nan_mismatch"]:
            parts.append(f"NaNs differ at {out['nan_mismatch']} positions")
        if inf_bad.any():
            parts.append(f"infinities differ at {int(inf_bad.sum())} positions")
        out["message"] = "; ".join(parts)
    return out


def _draw_stats(draws: np.ndarray, centre: np.ndarray, signs: np.ndarray) -> np.ndarray:
    dev = draws - centre
    return np.stack([
        np.sqrt(np.mean(dev**2, axis=1)),
        np.mean(dev, axis=1),
        np.mean(dev * signs, axis=1),
    ], axis=1)


def _compare_statistical(ref: np.ndarray, anchor: np.ndarray, got: np.ndarray, alpha_test: float,
                         seed: int) -> dict[str, Any]:
    from scipy.stats import ks_2samp

    out: dict[str, Any] = {"nan_mismatch": 0}
    if ref.shape[1:] != got.shape[1:]:
        out["message"] = f"shape mismatch: reference {list(ref.shape[1:])}, onnx {list(got.shape[1:])}"
        return out
    r = ref.reshape(len(ref), -1).astype(np.float64)
    a = anchor.reshape(len(anchor), -1).astype(np.float64)
    g = got.reshape(len(got), -1).astype(np.float64)
    nan_r, nan_g = np.isnan(r).any(axis=0), np.isnan(g).any(axis=0)
    out["nan_mismatch"] = int((nan_r != nan_g).sum())
    keep = ~(nan_r | nan_g | np.isnan(a).any(axis=0))
    r, a, g = r[:, keep], a[:, keep], g[:, keep]
    centre = a.mean(axis=0)
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=centre.shape)
    sr, sg = _draw_stats(r, centre, signs), _draw_stats(g, centre, signs)
    pvalues = {}
    for i, name in enumerate(_STAT_NAMES):
        x, y = sr[:, i], sg[:, i]
        if np.ptp(x) == 0 and np.ptp(y) == 0:
            pvalues[name] = 1.0 if np.allclose(x[0], y[0], rtol=1e-6, atol=1e-9) else 0.0
        else:
            pvalues[name] = float(ks_2samp(x, y).pvalue)
    mean_diff = np.abs(r.mean(axis=0) - g.mean(axis=0))
    spread_r = float(sr[:, 0].mean())
    out["max_abs_diff"] = float(mean_diff.max()) if mean_diff.size else 0.0
    out["mean_abs_diff"] = float(mean_diff.mean()) if mean_diff.size else 0.0
    out["p_value"] = min(pvalues.values())
    out["alpha_per_test"] = alpha_test
    out["statistics"] = {
        **{f"p_{k}": v for k, v in pvalues.items()},
        "spread_reference": spread_r,
        "spread_onnx": float(sg[:, 0].mean()),
        "spread_ratio": float(sg[:, 0].mean()) / spread_r if spread_r > 0 else float("inf"),
    }
    ok = out["p_value"] >= alpha_test and out["nan_mismatch"] == 0
    out["passed"] = ok
    if ok:
        out["message"] = "ok"
    else:
        worst = min(pvalues, key=pvalues.get)  # type: ignore[arg-type]
        out["message"] = (
            f"the ONNX draws do not follow the reference distribution: {worst} differs "
            f"(KS p={out['p_value']:.3g} < {alpha_test:.3g}); spread onnx/reference = "
            f"{out['statistics']['spread_ratio']:.3g}")
        if out["nan_mismatch"]:
            out["message"] += f"; NaNs differ at {out['nan_mismatch']} positions"
    return out


def check_parity(
    reference: nn.Module,
    onnx_path: str | os.PathLike[str],
    inputs: Any = None,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    samples: int | None = None,
    seed: int = 0,
    random_inputs: int = 3,
    alpha: float = DEFAULT_ALPHA,
    weights: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ParityReport:
    """Check that ``onnx_path`` computes what the eager ``reference`` computes.

    Args:
        reference: the original eager model, hooks and all (run in eval mode).
        onnx_path: the exported ``.onnx`` file.
        inputs: one tuple (the example: it and ``random_inputs`` random sets with the
            same shapes and dtypes are used, the last one at another batch size when the
            ONNX batch is dynamic), a list of tuples (used as given), or a path to an
            ``.npz``. ``None`` generates one set from the ONNX input signature.
        atol, rtol: tolerances of the element-wise rule ``|onnx-ref| <= atol + rtol*|ref|``.
        samples: draws per side for stochastic models (default 32).
        seed: seeds the random inputs and the reference's randomness.
        random_inputs: how many random input sets to add to an example.
        alpha: family-wise false-alarm bound of the statistical test.
        weights: a safetensors file to load into ``reference`` first, as a plain state
            dict (wrapper-owned keys are ignored; wrappers are never applied).
        progress: called as ``progress(done, total)`` while running.

    Returns:
        A :class:`ParityReport`, truthy when parity holds.

    Raises:
        InvalidArgumentError: bad arguments or inputs that do not fit the ONNX model.
        HookwrapError: the ONNX file cannot be opened.

    Example:
        >>> report = hw.check_parity(hooked_model, "m.onnx", (x,))
        >>> bool(report), report.checks[0].max_abs_diff
    """
    start = time.perf_counter()
    if not isinstance(reference, nn.Module):
        raise InvalidArgumentError(f"reference must be an nn.Module, got {type(reference).__name__}")
    for name, value in (("atol", atol), ("rtol", rtol)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
            raise InvalidArgumentError(f"{name} must be a number >= 0, got {value!r}")
    if samples is not None and (not isinstance(samples, int) or samples < 4):
        raise InvalidArgumentError(f"samples must be an integer >= 4, got {samples!r}")
    if not 0 < alpha < 1:
        raise InvalidArgumentError(f"alpha must be in (0, 1), got {alpha!r}")
    path = Path(onnx_path)
    onnx_file = read_onnx(path)
    if weights is not None:
        from .io import load_weights

        load_weights(reference, weights)
    random_ops = random_ops_of(onnx_file.proto)
    session = open_session(onnx_file)
    sig = _signature(session)
    out_names = [o.name for o in session.get_outputs()]
    sets, sources, spec = _input_sets(inputs, sig, seed=seed, random_inputs=random_inputs)
    notes: list[str] = []
    with eval_mode(reference), preserved(reference):
        # Stochastic means: outputs differ between runs under two different seeds. A run
        # that draws nothing from torch's RNG cannot depend on the seed, so the second
        # run is only needed when the first one drew random numbers.
        watch = _SeededOps()
        first = _reference_outputs(reference, sets[0], spec, seed + 101, watch)
        stochastic_ref = False
        if watch.seen:
            second = _reference_outputs(reference, sets[0], spec, seed + 202)
            stochastic_ref = not _same(first, second)
        statistical = stochastic_ref or bool(random_ops)
        if stochastic_ref and not random_ops:
            notes.append("the reference is stochastic but the ONNX graph has no random operators: "
                         "the export may have lost its randomness")
        if random_ops and not stochastic_ref:
            notes.append(f"the ONNX graph has random operators {random_ops} but the reference is deterministic")
        if random_ops.get("Dropout"):
            notes.append("the ONNX graph has Dropout nodes in training mode, which onnxruntime's inference "
                         "build runs as the identity: their randomness is lost (hw.export_onnx writes random "
                         "masks with RandomUniformLike instead)")
        k = samples or DEFAULT_SAMPLES
        n_anchor = max(k // 2, 8)
        per_input = (2 * k + n_anchor) if statistical else 2
        total, done = per_input * len(sets), 0
        checks: list[OutputCheck] = []
        n_tests = max(1, len(sets) * len(out_names) * len(_STAT_NAMES))
        alpha_test = alpha / n_tests
        for i, arrays in enumerate(sets):
            t0 = time.perf_counter()
            feeds = dict(zip(sig.names, arrays))
            if not statistical:
                ref_outs = first if i == 0 else _reference_outputs(reference, arrays, spec, seed)
                onnx_outs = session.run(None, feeds)
                done += 2
                if progress:
                    progress(done, total)
                pairs = [(ref_outs[j] if j < len(ref_outs) else None, onnx_outs[j], j) for j in range(len(out_names))]
            else:
                base = (seed + 1) * 1_000_003 + i * 10_007
                ref_draws, anchor_draws, onnx_draws = [], [], []
                for d in range(k):
                    ref_draws.append(_reference_outputs(reference, arrays, spec, base + d))
                    onnx_draws.append(session.run(None, feeds))
                    done += 2
                    if progress:
                        progress(done, total)
                for d in range(n_anchor):
                    anchor_draws.append(_reference_outputs(reference, arrays, spec, base + k + d))
                    done += 1
                    if progress:
                        progress(done, total)
                ref_outs = ref_draws[0]
                pairs = [(None, None, j) for j in range(len(out_names))]
            elapsed = (time.perf_counter() - t0) / max(1, len(out_names))
            if len(ref_outs) != len(out_names):
                checks.append(OutputCheck(i, "<outputs>", -1, "statistical" if statistical else "exact", False,
                                          f"the reference returns {len(ref_outs)} tensor output(s), the ONNX model "
                                          f"{len(out_names)} {out_names}", [], None, "", None, seconds=elapsed))
                continue
            for j, name in enumerate(out_names):
                result: dict[str, Any]
                if statistical:
                    ref_j = np.stack([d[j] for d in ref_draws])
                    got_j = np.stack([d[j] for d in onnx_draws]) if all(
                        d[j].shape == onnx_draws[0][j].shape for d in onnx_draws) else None
                    anchor_j = np.stack([d[j] for d in anchor_draws])
                    if got_j is None:
                        result = {"message": "the ONNX output shape changes between runs", "nan_mismatch": 0}
                    else:
                        result = _compare_statistical(ref_j, anchor_j, got_j, alpha_test, seed + j)
                    ref_arr, got_arr = ref_j[0], onnx_draws[0][j]
                else:
                    ref_arr, got_arr = pairs[j][0], pairs[j][1]
                    assert ref_arr is not None  # the output counts were checked above
                    result = _compare_exact(ref_arr, got_arr, atol, rtol)
                passed = bool(result.pop("passed", False))
                message = result.pop("message")
                if got_arr is not None and ref_arr is not None and ref_arr.dtype != got_arr.dtype:
                    passed = False
                checks.append(OutputCheck(
                    input=i, output=name, output_index=j, mode="statistical" if statistical else "exact",
                    passed=passed, message=message, reference_shape=list(ref_arr.shape),
                    onnx_shape=list(got_arr.shape) if got_arr is not None else None,
                    reference_dtype=str(ref_arr.dtype), onnx_dtype=str(got_arr.dtype) if got_arr is not None else None,
                    seconds=elapsed, **result,
                ))
    described = [
        {"index": i, "source": src, "shapes": [list(a.shape) for a in s], "dtypes": [str(a.dtype) for a in s]}
        for i, (s, src) in enumerate(zip(sets, sources))
    ]
    return ParityReport(
        passed=bool(checks) and all(c.passed for c in checks), mode="statistical" if statistical else "exact",
        onnx=str(path), atol=float(atol), rtol=float(rtol), seed=seed, checks=checks, inputs=described,
        stochastic_reference=stochastic_ref, random_ops=random_ops,
        alpha=alpha if statistical else None, samples=k if statistical else None,
        seconds=time.perf_counter() - start, notes=notes,
    )


def assert_parity(reference: nn.Module, onnx_path: str | os.PathLike[str], inputs: Any = None, **kwargs: Any) -> ParityReport:
    """:func:`check_parity`, raising :class:`~hookwrap.ParityError` (carrying the report) if it fails.

    Example:
        >>> hw.assert_parity(hooked_model, "m.onnx", (x,))   # in a pytest test
    """
    report = check_parity(reference, onnx_path, inputs, **kwargs)
    if not report:
        raise ParityError(report)
    return report
