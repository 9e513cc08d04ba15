"""Test helpers: real torchvision models with fixed seeds (no downloads)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torchvision
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.seed_dropout import DropoutHook  # noqa: E402  (the seed article's hook)

__all__ = ["build", "DropoutHook", "state_equal", "hook_table", "ROOT"]

_PRISTINE: dict[tuple, nn.Module] = {}


def build(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """A torchvision model with ``weights=None`` built under ``torch.manual_seed(seed)``,
    in eval mode. Built once per process and deep-copied after that."""
    key = (name, seed, tuple(sorted(kwargs.items())))
    if key not in _PRISTINE:
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        _PRISTINE[key] = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
        torch.random.set_rng_state(state)
    return copy.deepcopy(_PRISTINE[key])


def state_equal(a: dict, b: dict) -> bool:
    """Same keys in the same order and bit-identical tensors."""
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


def hook_table(model: nn.Module) -> list[tuple]:
    """Every hook as (path, kind, hook_id, id(hook), with_kwargs, always_call), in order."""
    import hookwrap as hw

    return [(h.path, h.kind, h.hook_id, id(h.hook), h.with_kwargs, h.always_call) for h in hw.inventory(model)]


class Tied(nn.Module):
    """A language-model-like toy whose output layer shares the embedding's weight."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.emb(ids))))


def tied(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return Tied().eval()


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


def requirement_closure(requirements: list[str], extras: tuple[str, ...] = ()) -> set[str]:
    """The installed distributions that ``requirements`` pull in, transitively (names
    normalised as pip does), following only requirements whose markers hold."""
    import re
    from importlib import metadata

    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    seen: set[str] = set()
    todo = [(Requirement(r), extras) for r in requirements]
    while todo:
        req, wanted = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (wanted or ("",))):
            continue
        name = norm(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # pip check reports it; the caller compares against that report
        todo += [(Requirement(r), tuple(req.extras)) for r in dist.requires or []]
    return seen
