"""Issue 25 figures: what the statistical parity check can see, and how often it cries wolf.

Two MC-dropout models: the seed's vgg16 (13 ``F.dropout2d(o, 0.2, True, False)`` hooks,
32x32) and timm's resnet10t with the same hook on each of its 14 convolutions (32x32). For
every checker seed (``SEEDS``, at least 50), a check like ``hw.check_parity(model,
onnx, (x,))`` at the defaults: 4 input sets (the example and 3 random ones drawn from the
seed), ``DEFAULT_SAMPLES`` draws per side and ``anchor_count`` anchor draws, and the
family-wise ``DEFAULT_ALPHA`` split as ``check_parity`` splits it (per input set and
pooled). The ONNX side runs exports in onnxruntime, with planted faults:

* ``none``: the correct export, whose failures are the false alarms;
* ``scale_1.02``, ``scale_1.05``: the last layer (weight and bias) scaled;
* ``weight_plus_1``: one weight of the last layer +1.0: class 0's weight on the penultimate
  feature of median mean activation among the active ones (a typical feature, not the
  strongest);
* ``bias_0.1_sigma``: every bias of the last layer moved by 0.1 x the standard deviation
  of the reference logits;
* ``p_0.25``: every dropout at p=0.25 instead of 0.2;
* ``lost_dropout``: the middle one of the dropouts left out of the export.

How the draws are made: k copies of an input in one batch are k draws (Dropout2d draws its
mask per sample and channel, onnxruntime's RandomUniformLike per value), distributed exactly
like k separate runs, and much faster. The exports stop before the last layer, which is
applied in numpy to the same draws of the penultimate activations, with and without each
last-layer fault: the correct and the faulty exports see the same dropout masks, as a
deterministic fault in a real export would. The verdicts come from hookwrap's own
``statistical_evidence``, ``compare_statistical_verdict`` and ``compare_pooled``.

Figures: detection rate per fault (limit 0.95, except ``scale_1.02``, reported) and the
false-alarm rate (limit: at most 1 false alarm in the seeds, a rate that a check holding
``alpha`` = 0.002 exceeds with probability under 0.5 % at 50 seeds), with seed counts.

    python benchmarks/bench_power.py [SEEDS]
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import emit, figure
from torch import nn

import hookwrap as hw
from hookwrap._onnx import open_session, read_onnx
from hookwrap.compare import (
    DEFAULT_ALPHA,
    DEFAULT_SAMPLES,
    Evidence,
    anchor_count,
    compare_pooled,
    compare_statistical_verdict,
    onnxruntime_seed,
    statistical_evidence,
)
from hookwrap.parity import _alphas

SEEDS = int(sys.argv[1]) if len(sys.argv) > 1 else 50
SETS = 4
DETECTION_LIMIT = 0.95
REPORTED_ONLY = {"scale_1.02"}


class Dropout2dHook:
    """The seed article's hook, registered on every Conv2d except those in ``skip``."""

    def __init__(self, p: float, skip: tuple[int, ...] = ()) -> None:
        self.p, self.skip = p, skip

    def attach(self, model: nn.Module) -> nn.Module:
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        for i, conv in enumerate(convs):
            if i not in self.skip:
                conv.register_forward_hook(self.hook)
        return model

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return F.dropout2d(output, self.p, True, False)


def vgg16() -> tuple[nn.Module, str]:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).eval(), "classifier.6"


def resnet10t() -> tuple[nn.Module, str]:
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False).eval(), "fc"


def headless(model: nn.Module, head: str) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """A copy of ``model`` that stops before its last layer, and that layer's weight and bias."""
    body = copy.deepcopy(model)
    parent_name, _, leaf = head.rpartition(".")
    parent = body.get_submodule(parent_name) if parent_name else body
    layer = getattr(parent, leaf)
    setattr(parent, leaf, nn.Identity())
    return body, layer.weight.detach().numpy().astype(np.float64), layer.bias.detach().numpy().astype(np.float64)


def run_model(model: nn.Module, x: torch.Tensor, n: int) -> np.ndarray:
    with torch.no_grad():
        return model(x.expand(n, *x.shape[1:]).contiguous()).numpy()


def run_session(session, name: str, x: np.ndarray, n: int) -> np.ndarray:
    return session.run(None, {name: np.ascontiguousarray(np.broadcast_to(x, (n, *x.shape[1:])))})[0]


def measure(build, name: str, folder: Path) -> list[dict]:
    model, head = build()
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    lost = n_convs // 2
    body, weight, bias = headless(model, head)
    reference = Dropout2dHook(0.2).attach(copy.deepcopy(body))
    k, n_anchor = DEFAULT_SAMPLES, anchor_count(DEFAULT_SAMPLES)
    example = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    exports = {"correct": Dropout2dHook(0.2), "p_0.25": Dropout2dHook(0.25), "lost_dropout": Dropout2dHook(0.2, (lost,))}
    sessions = {}
    for key, hooks in exports.items():
        path = folder / f"{name}_{key}.onnx"
        hw.export_onnx(hooks.attach(copy.deepcopy(body)), (example,), path, dynamic_batch=True)
        sessions[key] = open_session(read_onnx(path), seed=onnxruntime_seed(0))
    input_name = sessions["correct"].get_inputs()[0].name

    # The last-layer faults, fixed once from the reference on the example.
    torch.manual_seed(12345)
    h = run_model(reference, example, n_anchor).astype(np.float64)
    logits = h @ weight.T + bias
    active = np.flatnonzero(h.mean(axis=0) > 0)
    feature = int(active[np.argsort(h.mean(axis=0)[active])[len(active) // 2]])
    bump = np.zeros_like(weight)
    bump[0, feature] = 1.0
    sigma = float(logits.std())
    heads = {"none": (weight, bias), "scale_1.02": (1.02 * weight, 1.02 * bias),
             "scale_1.05": (1.05 * weight, 1.05 * bias), "weight_plus_1": (weight + bump, bias),
             "bias_0.1_sigma": (weight, bias + 0.1 * sigma)}
    faults = [*heads, "p_0.25", "lost_dropout"]
    alpha_test, alpha_pooled = _alphas(DEFAULT_ALPHA, SETS, 1)
    detected = {f: 0 for f in faults}
    per_set_only = {f: 0 for f in faults}
    start = time.perf_counter()
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        inputs = [example.numpy()] + [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(SETS - 1)]
        evidence: dict[str, list[Evidence]] = {f: [] for f in faults}
        for i, x in enumerate(inputs):
            torch.manual_seed((seed + 1) * 1000003 + i * 10007)
            ref_h = run_model(reference, torch.from_numpy(x), k + n_anchor).astype(np.float64)
            ref, anchor = (ref_h[:k] @ weight.T + bias), (ref_h[k:] @ weight.T + bias)
            got_h = run_session(sessions["correct"], input_name, x, k).astype(np.float64)
            got = {f: got_h @ w.T + b for f, (w, b) in heads.items()}
            for key in ("p_0.25", "lost_dropout"):
                got[key] = run_session(sessions[key], input_name, x, k).astype(np.float64) @ weight.T + bias
            for f in faults:
                found = statistical_evidence(ref.astype(np.float32), anchor.astype(np.float32),
                                             got[f].astype(np.float32), seed)
                assert isinstance(found, Evidence)
                evidence[f].append(found)
        for f in faults:
            sets_fail = any(not compare_statistical_verdict(e, alpha_test) for e in evidence[f])
            pooled_fail = not compare_pooled(evidence[f], alpha_pooled)
            detected[f] += sets_fail or pooled_fail
            per_set_only[f] += sets_fail
        print(f"{name}: seed {seed + 1}/{SEEDS}: " + ", ".join(f"{f} {detected[f]}" for f in faults),
              file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    common = {"seeds": SEEDS, "samples": k, "anchor": n_anchor, "input_sets": SETS, "alpha": DEFAULT_ALPHA}
    out = [figure(f"{name}_false_alarm_rate", detected["none"] / SEEDS, 1 / SEEDS, false_alarms=detected["none"],
                  **common)]
    for f in faults[1:]:
        limit = None if f in REPORTED_ONLY else DETECTION_LIMIT
        extra = {"feature": feature} if f == "weight_plus_1" else {"lost_index": lost, "dropouts": n_convs} \
            if f == "lost_dropout" else {"sigma": round(sigma, 4)} if f == "bias_0.1_sigma" else {}
        out.append(figure(f"{name}_detection_{f}", detected[f] / SEEDS, limit, better="higher",
                          detected=detected[f], detected_by_per_set_tests=per_set_only[f], **extra, **common))
    out.append(figure(f"{name}_power_seconds_per_seed", seconds / SEEDS, None))
    return out


def main() -> None:
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        figures = measure(vgg16, "seed_vgg16", Path(tmp)) + measure(resnet10t, "timm_resnet10t", Path(tmp))
    emit("power", figures)


if __name__ == "__main__":
    main()
