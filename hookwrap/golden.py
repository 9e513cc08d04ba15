"""Golden files: a reference recorded once, so that the parity gate needs no torch.

:func:`record` runs the original model (hooks and all) in the training image and writes
one ``.npz``: the input sets, the reference outputs (or, for a stochastic model, the
draws the statistical test needs), and a JSON entry. ``check_parity(golden_path, onnx)``
then replays them against onnxruntime with numpy only, and gives the verdict, report,
JSON and JUnit that the model itself would have given (the draws use the same seeds).

Layout (``format_version`` 2; 1 is still read; every entry reads with
``numpy.load(allow_pickle=False)``)::

    __hookwrap_golden__      uint8 array: UTF-8 JSON {"format": "hookwrap-golden",
                             "format_version": 2, "hookwrap_version", "torch_version",
                             "numpy_version", "stochastic": bool, "samples": k,
                             "anchor": n, "seed": int, "seeding": int, "draw_mode": "vmap" | "loop" | null,
                             "random_inputs": int, "atol": float | {"*": float,
                             output: float}, "rtol": (the same), "sets": N, "inputs": M,
                             "outputs": P, "sources": [str], "input_names": [str],
                             "interface": {"inputs": [{"name", "type", "shape"}], "outputs": [...]} | null,
                             "inventory": {...hw.inventory(model).to_dict()...}}
    input/<i>/<j>            input j of set i
    output/<i>/<j>           output j of set i (deterministic models)
    draw/<i>/<j>             k reference draws of output j for set i (stochastic models)
    anchor/<i>/<j>           n further draws, used only for the centre of the statistics

Reading is the loader's kind: a regular file only, sizes checked before reading, no
pickle, every entry and the JSON checked against each other; anything else is a
``ManifestError`` naming the entry. numpy only at import time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import parity_inputs as PI
from ._version import __version__
from .compare import DEFAULT_ATOL, DEFAULT_RTOL, tolerances
from .errors import HookwrapError, InvalidArgumentError, ManifestError

__all__ = ["record", "recorded_seed", "GoldenSide", "GOLDEN_FORMAT", "GOLDEN_VERSION", "META_KEY"]

GOLDEN_FORMAT = "hookwrap-golden"
GOLDEN_VERSION = 2
READ_VERSIONS = (1, 2)  # 2 added per-output tolerances and what reproduces a verdict
META_KEY = "__hookwrap_golden__"
MAX_META = 64 << 20


def record(model: Any, inputs: Any, path: str | os.PathLike[str], *, samples: int | None = None, seed: int = 0,
           random_inputs: int = 3, atol: float | Mapping[str, float] = DEFAULT_ATOL,
           rtol: float | Mapping[str, float] = DEFAULT_RTOL,
           onnx: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Record ``model``'s outputs (or draws) on its inputs into a golden ``.npz``, atomically.

    Args:
        model: the original eager model, hooks and all (run in eval mode; left as it was).
        inputs: one tuple (the example: it and ``random_inputs`` random sets drawn like it
            are recorded), a list of tuples, or an ``.npz`` path, as for ``check_parity``.
        path: the golden file to write.
        samples: draws per input for a stochastic model (default ``DEFAULT_SAMPLES``, 256).
        seed: seeds the random inputs and the draws, as in ``check_parity``.
        random_inputs: how many random input sets to add to an example.
        atol, rtol: the tolerances a check of this file uses by default: numbers, or
            mappings from output name to number (``"*"`` for the other outputs), at most
            1e3 and 1.
        onnx: the ONNX export of ``model`` that the gate will check (recommended): the
            file binds its interface (input and output names, element types, ranks and
            dynamic axes), which ``check --golden`` then compares, and its inputs are made
            as the live check makes them (a set at another batch size when the batch is
            dynamic), so that the golden check is the live check.

    Returns:
        The JSON entry written (``stochastic``, ``sets``, ``samples``, ...).

    Raises:
        InvalidArgumentError: bad arguments.
        HookwrapError: the model cannot run on the inputs, or the file cannot be written.

    Example:
        >>> hw.record(hooked_model, (x,), "golden.npz")["stochastic"]
        False
    """
    from .reference import record_arrays  # the torch side, imported only to record

    atol_json = _bounded(tolerances(atol, "atol", DEFAULT_ATOL).to_json(), "atol", MAX_ATOL)
    rtol_json = _bounded(tolerances(rtol, "rtol", DEFAULT_RTOL).to_json(), "rtol", MAX_RTOL)
    bound = None
    if onnx is not None:
        from ._onnx import open_session, read_onnx

        session = open_session(read_onnx(onnx, graph=False))
        bound = (PI.signature(session), PI.interface(session))
    arrays, meta = record_arrays(model, inputs, samples=samples, seed=seed, random_inputs=random_inputs,
                                 atol=atol_json, rtol=rtol_json, bound=bound)
    meta = {"format": GOLDEN_FORMAT, "format_version": GOLDEN_VERSION, "hookwrap_version": __version__, **meta}
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    _write(path, arrays)
    return meta


def _write(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
    from ._fs import atomic_path, file_errors

    target = Path(path)
    if target.suffix != ".npz":
        raise InvalidArgumentError(f"a golden file must end with .npz, got {str(target)!r}")
    with atomic_path(target) as tmp, file_errors(target, "write the golden file"), open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]


@dataclass
class GoldenSide:
    """The reference side of ``check_parity`` replayed from a golden file."""

    inputs: PI.InputSets
    stochastic: bool
    samples: int | None
    outputs: list[list[np.ndarray]]
    draws_: list[list[np.ndarray]]
    anchors: list[list[np.ndarray]]
    warnings: list[str] = field(default_factory=list)
    tolerances: dict[str, Any] = field(default_factory=dict)
    kind: str = "golden"
    torch_version: str | None = None
    draw_mode: str | None = None
    interface: dict[str, Any] | None = None
    input_names: list[str] = field(default_factory=list)

    def interface_differences(self, session: Any) -> list[str]:
        """How the ONNX model's interface departs from the one this file was recorded
        against (its bound interface, else the input names it recorded)."""
        if self.interface is not None:
            return PI.interface_differences(self.interface, PI.interface(session))
        names = [a.name for a in session.get_inputs()]
        if self.input_names and names != self.input_names:
            return [f"input names {names} against the recorded {self.input_names}"]
        return []

    @classmethod
    def open(cls, path: str | os.PathLike[str], sig: PI.Signature) -> GoldenSide:
        """Read and check a golden file against the ONNX model's signature.

        Raises:
            ManifestError: the file is not a golden file, is damaged, or does not fit.
            HookwrapError: it cannot be opened, or is not a regular file.
        """
        from ._npz import open_npz

        name = Path(path).name
        with open_npz(path, what="golden file", error=ManifestError) as npz:
            meta = _read_meta(npz, name)  # the metadata first: it says what else to read
            try:
                expected = _entries(meta)
                present = set(npz.names()) - {META_KEY}
                if present != expected:
                    odd = sorted(present ^ expected)[0]
                    raise ManifestError(f"{name}: entry {odd!r} {'is missing' if odd in expected else 'is not expected'}"
                                        f"; the golden file is damaged", key=odd)
                for i in range(meta["sets"]):  # the inputs must fit the model before any array is read
                    sig.check(tuple(_Declared(*npz.header(f"input/{i}/{j}")) for j in range(meta["inputs"])),
                              f"{name}: input set {i}")
                arrays = {key: npz.read(key) for key in npz.names() if key != META_KEY}
                return cls._build(name, arrays, meta, sig)
            except HookwrapError:
                raise
            except (KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError) as exc:
                raise ManifestError(f"{name}: the golden file is damaged ({type(exc).__name__}: {exc})",
                                    key="golden") from None

    @classmethod
    def _build(cls, name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any], sig: PI.Signature) -> GoldenSide:
        n_sets, n_in, n_out = meta["sets"], meta["inputs"], meta["outputs"]
        stochastic = meta["stochastic"]
        kind = "draw" if stochastic else "output"
        sets = [tuple(arrays[f"input/{i}/{j}"] for j in range(n_in)) for i in range(n_sets)]
        for i, s in enumerate(sets):
            sig.check(s, f"{name}: input set {i}")
        per_set = [[arrays[f"{kind}/{i}/{j}"] for j in range(n_out)] for i in range(n_sets)]
        anchors = [[arrays[f"anchor/{i}/{j}"] for j in range(n_out)] for i in range(n_sets)] if stochastic else []
        recorded: dict[str, Any] = {k: meta[k] for k in ("atol", "rtol") if k in meta}
        warnings = [w for w in meta.get("warnings", []) if isinstance(w, str)][:10]
        torch_version = meta.get("torch_version") if isinstance(meta.get("torch_version"), str) else None
        return cls(PI.InputSets(sets, list(meta["sources"])), stochastic, meta["samples"] if stochastic else None,
                   [] if stochastic else per_set, per_set if stochastic else [], anchors, warnings, recorded,
                   torch_version=torch_version[:40] if torch_version else None,
                   draw_mode=meta.get("draw_mode") if meta.get("draw_mode") in ("vmap", "loop") else None,
                   interface=_interface(meta.get("interface"), name),
                   input_names=_names(meta.get("input_names"), meta["inputs"]))

    def exact(self, index: int) -> list[np.ndarray]:
        if self.stochastic:
            return [d[0] for d in self.draws_[index]]
        return self.outputs[index]

    def draws(self, index: int, k: int, n_anchor: int) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
        """``k`` recorded draws (and the anchor draws); a deterministic recording repeats its
        one output, as the deterministic model itself would."""
        if not self.stochastic:
            outs = self.outputs[index]
            return [outs] * k, [outs] * n_anchor
        have = len(self.draws_[index][0]) if self.draws_[index] else 0
        if k > have:
            raise InvalidArgumentError(f"the golden file holds {have} draws per input; record it again with "
                                       f"--samples {k} (or check with samples <= {have})")
        draws = [[d[s] for d in self.draws_[index]] for s in range(k)]
        anchor = [[a[s] for a in self.anchors[index]] for s in range(len(self.anchors[index][0]))]
        return draws, anchor


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A golden file's metadata (format, counts, tolerances, interface, inventory), checked;
    no array is read.

    Raises:
        ManifestError: the file is not a golden file, or is damaged.

    Example:
        >>> read_meta("golden.npz")["stochastic"]
        True
    """
    from ._npz import open_npz

    with open_npz(path, what="golden file", error=ManifestError) as npz:
        return _read_meta(npz, Path(path).name)


def recorded_seed(path: str | os.PathLike[str]) -> int:
    """The seed a golden file was recorded with (its metadata only is read).

    Raises:
        ManifestError: the file is not a golden file, or is damaged.
    """
    name = Path(path).name
    seed = read_meta(path)["seed"]
    if not 0 <= seed < 2**63:
        raise ManifestError(f"{name}: golden field 'seed' is out of range", key="seed")
    return int(seed)


class _Declared:
    """What an entry's ``.npy`` header declares, for the signature check before it is read."""

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        self.shape, self.dtype, self.ndim = shape, dtype, len(shape)


_META_FIELDS = {"format": str, "format_version": int, "stochastic": bool, "sets": int, "inputs": int,
                "outputs": int, "sources": list, "seed": int}
# The largest tolerances a golden file may carry: beyond them a check passes nearly anything.
MAX_ATOL, MAX_RTOL = 1e3, 1.0


def _entries(meta: dict[str, Any]) -> set[str]:
    """The array entries that a golden file with this metadata holds."""
    n_sets, n_in, n_out = meta["sets"], meta["inputs"], meta["outputs"]
    kind = "draw" if meta["stochastic"] else "output"
    expected = {f"input/{i}/{j}" for i in range(n_sets) for j in range(n_in)}
    expected |= {f"{kind}/{i}/{j}" for i in range(n_sets) for j in range(n_out)}
    if meta["stochastic"]:
        expected |= {f"anchor/{i}/{j}" for i in range(n_sets) for j in range(n_out)}
    return expected


def _interface(value: Any, name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        return PI.read_interface(value, name)
    except InvalidArgumentError as exc:
        raise ManifestError(str(exc), key="interface") from None


def _names(value: Any, count: int) -> list[str]:
    """Recorded input names, if they are what record writes; else none (not compared)."""
    ok = isinstance(value, list) and len(value) == count and all(isinstance(n, str) and len(n) <= 1000 for n in value)
    return list(value) if ok else []


def _read_meta(npz: Any, name: str) -> dict[str, Any]:
    if META_KEY not in npz.names() or npz.size(META_KEY) > MAX_META + 128:
        raise ManifestError(f"{name}: not a hookwrap golden file (no {META_KEY!r} entry, or one over "
                            f"{MAX_META >> 20} MiB); write one with hookwrap record", key=META_KEY)
    return _meta(name, npz.read(META_KEY))


def _no_constant(text: str) -> Any:
    raise ValueError(f"the non-standard JSON constant {text} is not read")


def _meta(name: str, raw: np.ndarray) -> dict[str, Any]:
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > MAX_META:
        raise ManifestError(f"{name}: not a hookwrap golden file ({META_KEY!r} is not UTF-8 JSON bytes); write "
                            f"one with hookwrap record", key=META_KEY)
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError, UnicodeError) as exc:
        raise ManifestError(f"{name}: entry {META_KEY!r} is not valid JSON ({type(exc).__name__}: {exc})",
                            key=META_KEY) from None
    if not isinstance(meta, dict) or meta.get("format") != GOLDEN_FORMAT:
        raise ManifestError(f"{name}: not a hookwrap golden file", key=META_KEY)
    if meta.get("format_version") not in READ_VERSIONS or isinstance(meta.get("format_version"), bool):
        raise ManifestError(f"{name}: golden format_version {str(meta.get('format_version'))[:20]} is not read by "
                            f"hookwrap {__version__} (it reads {', '.join(map(str, READ_VERSIONS))}); record it "
                            f"again", key="format_version")
    for key, kind in _META_FIELDS.items():
        value = meta.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ManifestError(f"{name}: golden field {key!r} must be a {kind.__name__}", key=key)
    if not (0 < meta["sets"] <= 10_000 and 0 < meta["inputs"] <= 1_000 and 0 <= meta["outputs"] <= 1_000):
        raise ManifestError(f"{name}: golden counts are out of range", key="sets")
    if len(meta["sources"]) != meta["sets"] or not all(isinstance(s, str) for s in meta["sources"]):
        raise ManifestError(f"{name}: golden field 'sources' must name each set", key="sources")
    if meta["stochastic"] and not (isinstance(meta.get("samples"), int) and meta["samples"] >= 4):
        raise ManifestError(f"{name}: a stochastic golden file needs 'samples' >= 4", key="samples")
    for key, top in (("atol", MAX_ATOL), ("rtol", MAX_RTOL)):
        if key in meta:
            try:
                _bounded(meta[key], key, top)
            except InvalidArgumentError as exc:
                raise ManifestError(f"{name}: golden field {exc}", key=key) from None
    return meta


def _bounded(value: Any, key: str, top: float) -> Any:
    """``value`` (a tolerance as JSON: a number, or ``{"*": number, output: number}``) when
    every number in it is from 0 to ``top``.

    Raises:
        InvalidArgumentError: it is not, naming the output.
    """
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= top

    if isinstance(value, dict):
        if len(value) > 1000:
            raise InvalidArgumentError(f"{key!r} names {len(value)} outputs; at most 1000 are read")
        for output, v in value.items():
            if not isinstance(output, str) or not output or not number(v):
                raise InvalidArgumentError(f"{key!r} for output {str(output)[:60]!r} is {str(v)[:30]}; a tolerance "
                                           f"must be a finite number from 0 to {top:g}")
        return value
    if not number(value):
        raise InvalidArgumentError(f"{key!r} is {str(value)[:30]}; a tolerance must be a finite number from 0 to "
                                   f"{top:g}")
    return value
