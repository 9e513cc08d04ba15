"""The reference side of a parity check: the original eager model, hooks and all.

It runs in eval mode without autograd, seeded per run, with the caller's RNG state and
the model's own state (caches its forward fills) put back afterwards. A model is
*stochastic* when its outputs differ between runs under two different seeds; a run that
draws nothing from torch's RNG cannot depend on the seed, so the second run is only made
when the first one drew random numbers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils import _pytree

from . import parity_inputs as PI
from ._torch import eval_mode, forked_rng, reseed
from ._txn import deepcopy_model, preserved
from .errors import InvalidArgumentError

# Reference draws run this many at a time under torch.func.vmap (see ModelReference.batched_outputs).
VMAP_CHUNK = 32

__all__ = ["SeededOps", "ModelReference", "ModelSide", "model_side", "model_inputs", "with_weights",
           "looks_untrained", "record_arrays"]


class SeededOps:
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


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def model_inputs(inputs: Any, sig: PI.Signature, *, seed: int, random_inputs: int) -> tuple[PI.InputSets, Any]:
    """The input sets for ``inputs`` (one tuple, a list of tuples, an ``.npz`` path or None)
    and the pytree spec that turns a set back into the model's positional arguments."""
    if isinstance(inputs, (str, os.PathLike)):
        return PI.from_npz(inputs, sig), None
    if inputs is None:
        return PI.from_signature(sig, seed=seed, random_inputs=random_inputs), None
    if isinstance(inputs, list):
        if not inputs or not all(isinstance(s, tuple) for s in inputs):
            raise InvalidArgumentError("inputs must be a tuple (one example), a list of tuples, or a path to an .npz")
        flat = [_pytree.tree_flatten(s) for s in inputs]
        return PI.from_given([tuple(_to_numpy(v) for v in leaves) for leaves, _ in flat], sig), flat[0][1]
    if isinstance(inputs, tuple):
        leaves, spec = _pytree.tree_flatten(inputs)
        return PI.from_example(tuple(_to_numpy(v) for v in leaves), sig, seed=seed, random_inputs=random_inputs), spec
    raise InvalidArgumentError(
        f"inputs must be a tuple (one example), a list of tuples, or a path to an .npz; got {type(inputs).__name__}")


def with_weights(model: nn.Module, weights: str | os.PathLike[str] | None) -> nn.Module:
    """``model``, or a copy of it holding the tensors of ``weights`` (a safetensors file,
    loaded as a plain state dict): the caller's model is never changed."""
    if weights is None:
        return model
    from .io import load_weights

    copy = deepcopy_model(model, "check_parity(weights=...)", share_tensors=True)
    return load_weights(copy, weights, assign=True)


@dataclass
class ModelReference:
    """Runs the reference model on input sets given as numpy arrays."""

    model: nn.Module
    spec: Any = None

    def args(self, arrays: tuple[np.ndarray, ...]) -> tuple:
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        return tuple(_pytree.tree_unflatten(tensors, self.spec)) if self.spec is not None else tuple(tensors)

    def outputs(self, arrays: tuple[np.ndarray, ...], seed: int | None, watch: SeededOps | None = None) -> list[np.ndarray]:
        """Every tensor the model returns (in pytree order), as numpy arrays."""
        with forked_rng(), torch.no_grad(), \
                (watch.mode if watch else contextlib.nullcontext()):
            if seed is not None:
                reseed(seed)
            out = self.model(*self.args(arrays))
        return [v.detach().cpu().numpy() for v in _pytree.tree_leaves(out) if isinstance(v, Tensor)]

    def batched_outputs(self, arrays: tuple[np.ndarray, ...], seed: int, n: int,
                        like: list[np.ndarray]) -> list[list[np.ndarray]] | None:
        """``n`` draws, :data:`VMAP_CHUNK` at a time, under ``torch.func.vmap`` with
        ``randomness="different"``: every copy runs as its own call (a batch-wide reduction
        sees one copy, as in a call of its own) and draws its own randomness, so the draws
        are distributed as ``n`` separate calls, and the weights are read once per chunk,
        not once per draw. Chunk ``c`` runs under ``reseed(seed + c)``. None when
        vmap cannot run the model, or its outputs do not look like ``like`` (a plain call's):
        the caller then makes the draws one call at a time."""
        leaves, spec = _pytree.tree_flatten(self.args(arrays))

        def call(*batch: Tensor) -> list[Tensor]:
            out = self.model(*_pytree.tree_unflatten(list(batch), spec))
            return [v for v in _pytree.tree_leaves(out) if isinstance(v, Tensor)]

        batched = torch.func.vmap(call, randomness="different")
        draws: list[list[np.ndarray]] = []
        with forked_rng(), torch.no_grad():
            for c, start in enumerate(range(0, n, VMAP_CHUNK)):
                m = min(VMAP_CHUNK, n - start)
                reseed(seed + c)
                try:
                    outs = batched(*(leaf.unsqueeze(0).expand(m, *leaf.shape) for leaf in leaves))
                except Exception:  # an op or a hook that vmap cannot run: one call per draw instead
                    return None
                if len(outs) != len(like) or any(tuple(o.shape[1:]) != a.shape or o.dtype != torch.from_numpy(a).dtype
                                                 for o, a in zip(outs, like)):
                    return None
                draws.extend([o[j].detach().cpu().numpy() for o in outs] for j in range(m))
        return draws

    def first_run(self, arrays: tuple[np.ndarray, ...], seed: int) -> tuple[list[np.ndarray], bool]:
        """The outputs of a first run, and whether the model is stochastic."""
        watch = SeededOps()
        first = self.outputs(arrays, seed + 101, watch)
        if not watch.seen:
            return first, False
        second = self.outputs(arrays, seed + 202)
        same = len(first) == len(second) and all(
            x.shape == y.shape and np.array_equal(x, y, equal_nan=True) for x, y in zip(first, second))
        return first, not same

    @contextlib.contextmanager
    def running(self) -> Iterator[ModelReference]:
        """Eval mode for the block; the model's flags and structure as they were afterwards."""
        with eval_mode(self.model), preserved(self.model):
            yield self


def looks_untrained(model: nn.Module) -> bool:
    """True when every Linear and Conv weight (at least three) still lies inside PyTorch's
    default initialisation bound, ``1/sqrt(fan_in)``, and spreads like it: a cheap sign
    that the reference holds freshly initialised, random weights."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if len(layers) < 3:
        return False
    with torch.no_grad():
        for layer in layers:
            weight = layer.weight
            fan_in = weight[0].numel()
            bound = 1.0 / float(np.sqrt(fan_in))
            if weight.numel() < 64 or float(weight.abs().max()) > bound * 1.0001:
                return False
            if abs(float(weight.float().std()) / (bound / float(np.sqrt(3))) - 1) > 0.1:
                return False
    return True


UNTRAINED = ("the reference's weights look freshly initialised (every Linear and Conv weight within PyTorch's "
             "default init bound): a check of random weights says little about the trained model; load its "
             "weights (weights=...) first")


@dataclass
class ModelSide:
    """The reference side of ``check_parity`` when it is a model run now."""

    ref: ModelReference
    inputs: PI.InputSets
    seed: int
    first: list[np.ndarray]
    stochastic: bool
    warnings: list[str]
    kind: str = "model"
    torch_version: str = torch.__version__.split("+")[0]
    draw_mode: str | None = None

    def exact(self, index: int) -> list[np.ndarray]:
        return self.first if index == 0 else self.ref.outputs(self.inputs.sets[index], self.seed)

    def draws(self, index: int, k: int, n_anchor: int) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
        """``k`` draws and ``n_anchor`` anchor draws of the reference: batched under vmap
        where the model allows it (:meth:`ModelReference.batched_outputs`), else one call per
        draw, each with its own seed. ``draw_mode`` says which ran."""
        base = (self.seed + 1) * 1_000_003 + index * 10_007
        arrays = self.inputs.sets[index]
        batched = None
        if self.draw_mode != "loop":  # vmap's outputs are checked against a plain call's
            like = self.first if index == 0 else self.ref.outputs(arrays, base)
            batched = self.ref.batched_outputs(arrays, base, k + n_anchor, like)
        if batched is not None:
            self.draw_mode = "vmap"
            return batched[:k], batched[k:]
        self.draw_mode = "loop"  # every later set too: one scheme per check
        return ([self.ref.outputs(arrays, base + d) for d in range(k)],
                [self.ref.outputs(arrays, base + k + d) for d in range(n_anchor)])

    def running(self) -> Any:
        return self.ref.running()


def model_side(model: Any, inputs: Any, sig: PI.Signature, *, seed: int, random_inputs: int,
               weights: str | os.PathLike[str] | None) -> ModelSide:
    """Prepare a model as the reference of a parity check: weights (in a copy), inputs, and
    a first run that says whether it is stochastic."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"reference must be an nn.Module or a golden file path, got {type(model).__name__}")
    model = with_weights(model, weights)
    sets, spec = model_inputs(inputs, sig, seed=seed, random_inputs=random_inputs)
    ref = ModelReference(model, spec)
    with ref.running():
        first, stochastic = ref.first_run(sets.sets[0], seed)
    return ModelSide(ref, sets, seed, first, stochastic, [UNTRAINED] if looks_untrained(model) else [])


def _recording_signature(model: nn.Module, inputs: Any) -> PI.Signature:
    """The signature an export of ``model`` will have, as far as the inputs tell: names
    from ``forward`` (or an ``.npz``'s keys), shapes and dtypes of the example (a golden file
    fixes its shapes; the check compares them with the ONNX model's)."""
    from ._npz import read_npz
    from .export import forward_input_names

    if isinstance(inputs, (str, os.PathLike)):
        arrays = read_npz(inputs, what="inputs file")
        names: list[str] = []
        ndims: dict[str, int] = {}
        for key, value in arrays.items():
            base = key.partition("/")[2] or key
            if base not in ndims:
                names.append(base)
                ndims[base] = value.ndim
        if all(n.startswith("arr_") and n[4:].isdigit() for n in names):
            names.sort(key=lambda n: int(n[4:]))
        return PI.Signature(names, [[None] * ndims[n] for n in names], [None] * len(names))
    first = inputs[0] if isinstance(inputs, list) and inputs else inputs
    leaves = [_to_numpy(v) for v in _pytree.tree_leaves(first)] if isinstance(first, tuple) else []
    if not leaves:
        raise InvalidArgumentError("record needs inputs: one tuple (the example), a list of tuples, or an .npz path")
    return PI.Signature(forward_input_names(model, len(leaves)), [list(a.shape) for a in leaves],
                        [a.dtype for a in leaves])


def record_arrays(model: Any, inputs: Any, *, samples: int | None, seed: int, random_inputs: int,
                  atol: Any, rtol: Any, bound: tuple[PI.Signature, dict[str, Any]] | None = None
                  ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and JSON entry of a golden file (see :mod:`hookwrap.golden`): the same
    runs, with the same seeds, that ``check_parity`` makes of the model itself. ``atol``
    and ``rtol`` are JSON values (a number, or ``{"*": default, output: value}``); ``bound``
    is the signature and interface of the ONNX export the file is recorded against."""
    from .compare import DEFAULT_SAMPLES, SEEDING, anchor_count, check_draw_options
    from .inventory import list_hooks

    check_draw_options(samples, seed)
    sig = bound[0] if bound is not None else _recording_signature(model, inputs)
    side = model_side(model, inputs, sig, seed=seed, random_inputs=random_inputs, weights=None)
    k = samples or DEFAULT_SAMPLES
    arrays: dict[str, np.ndarray] = {}
    n_out = 0
    with side.running():
        for i, s in enumerate(side.inputs.sets):
            arrays.update({f"input/{i}/{j}": a for j, a in enumerate(s)})
            if side.stochastic:
                draws, anchor = side.draws(i, k, anchor_count(k))
                n_out = len(draws[0])
                arrays.update({f"draw/{i}/{j}": np.stack([d[j] for d in draws]) for j in range(n_out)})
                arrays.update({f"anchor/{i}/{j}": np.stack([d[j] for d in anchor]) for j in range(n_out)})
            else:
                outs = side.exact(i)
                n_out = len(outs)
                arrays.update({f"output/{i}/{j}": a for j, a in enumerate(outs)})
    meta = {"torch_version": torch.__version__.split("+")[0], "stochastic": side.stochastic,
            "samples": k if side.stochastic else None, "anchor": anchor_count(k) if side.stochastic else None,
            "seed": seed, "atol": atol, "rtol": rtol, "sets": len(side.inputs.sets), "seeding": SEEDING,
            "draw_mode": side.draw_mode, "interface": bound[1] if bound is not None else None,
            "random_inputs": random_inputs, "numpy_version": np.__version__,
            "inputs": len(side.inputs.sets[0]), "outputs": n_out, "sources": side.inputs.sources,
            "input_names": sig.names, "warnings": side.warnings, "inventory": list_hooks(model).to_dict()}
    return arrays, meta
