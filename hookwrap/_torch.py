"""Small torch helpers shared by capture, convert, export and parity (a leaf module)."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module_mod
from torch.utils import _pytree

__all__ = ["eval_mode", "forked_rng", "reseed", "seeded_run", "inputs_like", "quiet", "batch_of_two", "unwrap_hook", "resized",
           "other_sizes"]

# The loggers (and warning sources) of torch and its ONNX exporter: quiet() silences these only.
TORCH_LOGGERS = ("torch", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence torch's own loggers and warnings for a block.

    torch.export logs whole tracebacks at ERROR level before it raises; the exception
    hookwrap raises says what went wrong, once. Only loggers named ``torch...``,
    ``onnxscript...`` and ``onnx_ir...`` are touched, and only for the block: the rest of the
    process's logging, stdout and stderr are left alone."""
    names = [n for n in list(logging.Logger.manager.loggerDict) if n.split(".")[0] in TORCH_LOGGERS]
    loggers = [logging.getLogger(n) for n in {*names, *TORCH_LOGGERS}]
    saved = [(logger, logger.disabled) for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        with warnings.catch_warnings():
            for name in TORCH_LOGGERS:
                warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")
            yield
    finally:
        for logger, disabled in saved:
            logger.disabled = disabled


def batch_of_two(value: Any) -> Any:
    """``value`` with every tensor whose first dimension is 1 repeated to 2: torch.export
    specialises size-1 dimensions, so a trace at batch 1 would only accept batch 1."""
    return _pytree.tree_map(
        lambda v: torch.cat([v, v]) if isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == 1 else v, value)


def unwrap_hook(hook: Any) -> Any:
    """The function or object behind a registered hook (through torch's ``_WrappedHook``
    and ``functools.partial``)."""
    for _ in range(8):
        if isinstance(hook, _module_mod._WrappedHook):
            hook = hook.hook
        elif isinstance(hook, functools.partial):
            hook = hook.func
        else:
            break
    return hook


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for a block, then restore every module's own flag.

    The flags are set directly, as ``nn.Module.train`` does, without calling the model's
    own ``train``/``eval`` overrides: those may clear caches or change other state (timm's
    LeViT empties its attention-bias cache), and a check must leave the model alone."""
    modes = [(m, m.training) for m in model.modules()]
    for m, _ in modes:
        m.training = False
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


def forked_rng() -> contextlib.AbstractContextManager:
    """torch's RNG state saved and restored around a block: the CPU generator, and every
    CUDA device's once CUDA is in use (the devices ``reseed`` seeds)."""
    return torch.random.fork_rng(devices=_cuda_devices())


def reseed(seed: int) -> None:
    """Seed the generators ``forked_rng`` restores, and no other.

    ``torch.manual_seed`` does the same on the CPU, and beside it queues a seed for a CUDA
    start that has not happened, formatting a stack trace each time (0.7 ms a call with the
    CUDA wheel, a tenth of ``hw.convert``'s time on vgg16) and changing the seed a later
    CUDA start would get, which ``forked_rng`` cannot restore. The CPU stream is the same:
    ``reseed(s)`` then ``torch.rand(3)`` draws what ``torch.manual_seed(s)`` would."""
    torch.default_generator.manual_seed(seed)
    for device in _cuda_devices():
        torch.cuda.default_generators[device].manual_seed(seed)


def seeded_run(model: nn.Module, inputs: tuple, seed: int, kwargs: dict[str, Any] | None = None) -> Any:
    """``model(*inputs, **kwargs)`` in eval mode without autograd, with torch's RNG seeded by
    ``seed`` and the caller's RNG state restored afterwards."""
    with forked_rng(), torch.no_grad(), eval_mode(model):
        reseed(seed)
        return model(*inputs, **(kwargs or {}))


def resized(value: Tensor, dim: int, size: int) -> Tensor:
    """``value`` with dimension ``dim`` cut or tiled to ``size`` (values repeat, so token ids
    stay valid)."""
    n = value.shape[dim]
    if size <= n:
        return value.narrow(dim, 0, size).clone()
    tiles = -(-size // n)
    tiled = torch.cat([value] * tiles, dim)  # a new tensor: cut (and copied) only if it is too long
    return tiled if tiles * n == size else tiled.narrow(dim, 0, size).clone()


def _other(size: int, spatial: bool) -> int:
    if spatial:  # a multiple of 32 stays one, for the strided convnets that need it
        return size - 32 if size >= 96 else size * 2  # large images shrink: the check then costs less
    return size + 3


def other_sizes(example: tuple) -> list[tuple[tuple, str]]:
    """Inputs like ``example`` whose non-batch sizes differ, most likely first, each with a
    description: sequences (rank 2 and 3, dimension 1) grow by 3; images and volumes (rank 4
    and 5) change every spatial dimension (-32 from 96 up, else x2); for rank 3, also the
    last dimension (``(batch, channels, length)``). Every tensor of a rank changes alike, so
    token ids and their attention mask stay aligned. Empty if no tensor has such a dimension."""
    tensors = [v for v in _pytree.tree_leaves(example) if isinstance(v, Tensor)]
    plans: list[dict[int, list[int]]] = []
    ranks = {t.dim() for t in tensors}
    first = {r: ([1] if r in (2, 3) else list(range(2, r)) if r in (4, 5) else []) for r in ranks}
    plans.append(first)
    if 3 in ranks:
        plans.append({**first, 3: [2]})
    variants: list[tuple[tuple, str]] = []
    for plan in plans:
        changes: list[str] = []
        count = [0]

        def grow(value: Any, plan: dict[int, list[int]] = plan, changes: list[str] = changes,
                 count: list[int] = count) -> Any:
            if not isinstance(value, Tensor):
                return value
            index = count[0]
            count[0] += 1
            dims = [d for d in plan.get(value.dim(), []) if value.shape[d] > 0]
            if not dims:
                return value
            before = list(value.shape)
            for d in dims:
                value = resized(value, d, _other(value.shape[d], value.dim() >= 4))
            changes.append(f"input {index} {before} -> {list(value.shape)}")
            return value

        grown = _pytree.tree_map(grow, example)
        if changes and all(v[1] != "; ".join(changes) for v in variants):
            variants.append((tuple(grown), "; ".join(changes)))
    return variants


def inputs_like(example: Any, seed: int) -> Any:
    """A new input of the same structure, shapes and dtypes as ``example``, drawn with
    ``seed``: floating tensors from a normal distribution with the example's mean and
    spread, integer tensors uniformly between the example's min and max (so token ids
    stay in the vocabulary), booleans at random. Anything else is kept as it is."""
    gen = torch.Generator().manual_seed(seed)

    def draw(value: Any) -> Any:
        if isinstance(value, Tensor):
            if value.numel() == 0:
                return value.clone()
            if value.is_floating_point():
                std = float(value.float().std()) if value.numel() > 1 else 1.0
                std = std if math.isfinite(std) and std > 0 else 1.0
                mean = float(value.float().mean())
                mean = mean if math.isfinite(mean) else 0.0
                noise = torch.randn(value.shape, generator=gen, dtype=torch.float32)
                return (noise * std + mean).to(value.dtype)
            if value.dtype == torch.bool:
                return torch.rand(value.shape, generator=gen) < 0.5
            if not value.is_complex():
                lo, hi = int(value.min()), int(value.max())
                return torch.randint(lo, hi + 1, value.shape, generator=gen, dtype=torch.int64).to(value.dtype)
            return value.clone()
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return tuple(draw(v) for v in value)
        if isinstance(value, list):
            return [draw(v) for v in value]
        if isinstance(value, dict):
            return {k: draw(v) for k, v in value.items()}
        return value

    return draw(example)


