"""Comparing one output of the reference with the same output of the ONNX model.

Two rules, each returning a frozen :class:`Comparison` (truthy when it passes):

* :func:`compare_exact`: the ``numpy.allclose`` rule, value by value: a value passes when
  ``|onnx - ref| <= atol + rtol * |ref|``; NaNs must sit in the same places and
  infinities must match exactly; shapes and dtypes must be equal. The comparison reports
  the max and mean absolute difference, the max relative difference (over non-zero
  reference values), the fraction of values that fail and ``required_atol``: the smallest
  ``atol`` that would have passed at this ``rtol``.
* :func:`compare_statistical`, for stochastic models: every draw ``y`` is reduced to three
  numbers, its RMS distance to ``c`` (the mean of separate anchor draws of the
  reference), its mean offset from ``c``, and its projection on a fixed random sign
  vector. If both sides draw from the same distribution these numbers are i.i.d. and
  exchangeable between the sides, so a two-sample Kolmogorov-Smirnov test is valid for
  each of them. The comparison fails if any p-value is below ``alpha_test``.

numpy only (scipy for the statistical test): the torch-free parity gate uses this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Measures", "Comparison", "compare_exact", "compare_statistical", "STAT_NAMES", "DEFAULT_ALPHA", "DEFAULT_SAMPLES"]

STAT_NAMES = ("rms_distance", "mean_offset", "projection")
DEFAULT_ALPHA = 0.002  # the family-wise false-alarm bound of a whole statistical check
DEFAULT_SAMPLES = 32  # draws per side


@dataclass(frozen=True, kw_only=True)
class Measures:
    """What a comparison measured (the fields an output check reports)."""

    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    max_rel_diff: float | None = None
    mismatch_fraction: float | None = None
    required_atol: float | None = None
    nan_mismatch: int = 0
    p_value: float | None = None
    alpha_per_test: float | None = None
    statistics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Comparison(Measures):
    """The outcome of comparing one output; truthy when it passes."""

    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed


def _mismatch(ref_shape: tuple, got_shape: tuple, ref_dtype: Any, got_dtype: Any) -> Comparison | None:
    if ref_shape != got_shape:
        return Comparison(passed=False, message=f"shape mismatch: reference {list(ref_shape)}, onnx {list(got_shape)}")
    if ref_dtype != got_dtype:
        return Comparison(passed=False, message=f"dtype mismatch: reference {ref_dtype}, onnx {got_dtype}")
    return None


def compare_exact(ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> Comparison:
    """Compare two arrays value by value with ``|got - ref| <= atol + rtol * |ref|``."""
    refused = _mismatch(ref.shape, got.shape, ref.dtype, got.dtype)
    if refused is not None:
        return refused
    r, g = ref.astype(np.float64), got.astype(np.float64)
    nan_r, nan_g = np.isnan(r), np.isnan(g)
    nan_mismatch = int((nan_r != nan_g).sum())
    both = ~(nan_r | nan_g)
    inf = both & (np.isinf(r) | np.isinf(g))
    inf_bad = inf & (r != g)
    fin = both & ~inf
    diff = np.abs(g[fin] - r[fin])
    mag = np.abs(r[fin])
    bad = diff > atol + rtol * mag
    n = ref.size
    failing = int(bad.sum()) + int(inf_bad.sum()) + nan_mismatch
    max_abs = float(diff.max()) if diff.size else 0.0
    nz = mag > 0
    required = float(max(0.0, (diff - rtol * mag).max())) if diff.size else 0.0
    parts = []
    if bad.any():
        parts.append(f"{int(bad.sum())} of {n} values ({100 * bad.sum() / n:.3g}%) outside |onnx-ref| <= {atol:g} + "
                     f"{rtol:g}*|ref|, max |diff| {max_abs:.3g}; would pass with atol >= {required:.3g}")
    if nan_mismatch:
        parts.append(f"NaNs differ at {nan_mismatch} positions")
    if inf_bad.any():
        parts.append(f"infinities differ at {int(inf_bad.sum())} positions")
    return Comparison(
        passed=failing == 0, message="; ".join(parts) or "ok", max_abs_diff=max_abs,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        max_rel_diff=float((diff[nz] / mag[nz]).max()) if nz.any() else 0.0,
        mismatch_fraction=failing / n if n else 0.0, required_atol=required, nan_mismatch=nan_mismatch,
        statistics={"reference_max_abs": float(mag.max()) if mag.size else 0.0})


def _draw_stats(draws: np.ndarray, centre: np.ndarray, signs: np.ndarray) -> np.ndarray:
    dev = draws - centre
    return np.stack([np.sqrt(np.mean(dev**2, axis=1)), np.mean(dev, axis=1), np.mean(dev * signs, axis=1)], axis=1)


def _p_values(sr: np.ndarray, sg: np.ndarray) -> dict[str, float]:
    from scipy.stats import ks_2samp

    pvalues = {}
    for i, name in enumerate(STAT_NAMES):
        x, y = sr[:, i], sg[:, i]
        if np.ptp(x) == 0 and np.ptp(y) == 0:
            pvalues[name] = 1.0 if np.allclose(x[0], y[0], rtol=1e-6, atol=1e-9) else 0.0
        else:
            pvalues[name] = float(ks_2samp(x, y).pvalue)
    return pvalues


def compare_statistical(ref: np.ndarray, anchor: np.ndarray, got: np.ndarray, alpha_test: float,
                        seed: int) -> Comparison:
    """Compare draws (first axis) of the reference and of the ONNX model; ``anchor`` holds
    further reference draws, used only for the centre."""
    refused = _mismatch(ref.shape[1:], got.shape[1:], None, None)
    if refused is not None:
        return refused
    r = ref.reshape(len(ref), -1).astype(np.float64)
    a = anchor.reshape(len(anchor), -1).astype(np.float64)
    g = got.reshape(len(got), -1).astype(np.float64)
    nan_r, nan_g = np.isnan(r).any(axis=0), np.isnan(g).any(axis=0)
    nan_mismatch = int((nan_r != nan_g).sum())
    keep = ~(nan_r | nan_g | np.isnan(a).any(axis=0))
    r, a, g = r[:, keep], a[:, keep], g[:, keep]
    centre = a.mean(axis=0)
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=centre.shape)
    sr, sg = _draw_stats(r, centre, signs), _draw_stats(g, centre, signs)
    pvalues = _p_values(sr, sg)
    mean_diff = np.abs(r.mean(axis=0) - g.mean(axis=0))
    spread_r, spread_g = float(sr[:, 0].mean()), float(sg[:, 0].mean())
    p_value = min(pvalues.values())
    statistics = {**{f"p_{k}": v for k, v in pvalues.items()}, "spread_reference": spread_r,
                  "spread_onnx": spread_g, "spread_ratio": spread_g / spread_r if spread_r > 0 else math.inf}
    passed = p_value >= alpha_test and nan_mismatch == 0
    message = "ok"
    if not passed:
        worst = min(pvalues, key=lambda k: pvalues[k])
        message = (f"the ONNX draws do not follow the reference distribution: {worst} differs (KS p={p_value:.3g} "
                   f"< {alpha_test:.3g}); spread onnx/reference = {statistics['spread_ratio']:.3g}")
        if nan_mismatch:
            message += f"; NaNs differ at {nan_mismatch} positions"
    return Comparison(
        passed=passed, message=message, max_abs_diff=float(mean_diff.max()) if mean_diff.size else 0.0,
        mean_abs_diff=float(mean_diff.mean()) if mean_diff.size else 0.0, nan_mismatch=nan_mismatch,
        p_value=p_value, alpha_per_test=alpha_test, statistics=statistics)
