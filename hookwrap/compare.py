"""Comparing one output of the reference with the same output of the ONNX model.

Two rules, each returning a frozen :class:`Comparison` (truthy when it passes):

* :func:`compare_exact`: the ``numpy.allclose`` rule, value by value: a value passes when
  ``|onnx - ref| <= atol + rtol * |ref|``; NaNs must sit in the same places and
  infinities must match exactly; shapes and dtypes must be equal. The comparison reports
  the max and mean absolute difference, the max relative difference (over non-zero
  reference values), the fraction of values that fail and ``required_atol``: the smallest
  ``atol`` that would have passed at this ``rtol``.
* :func:`compare_statistical`, for stochastic models: every draw ``y`` is reduced to a few
  numbers measured from ``c`` (the mean of separate anchor draws of the reference): its
  RMS distance to ``c``, its mean offset, its projection on a fixed random sign vector,
  its projection on ``c``'s direction and its mean squared distance. If both sides draw
  from the same distribution these numbers are i.i.d. and exchangeable between the sides.
  Seven tests (:data:`STAT_NAMES`) then compare the sides: two-sample Kolmogorov-Smirnov
  tests of the first three numbers' distributions, and Welch t-tests of the first two
  moments: the mean along ``c``, the mean offset, the mean squared distance, and the mean
  of every single value (with Bonferroni's correction over the values). The comparison
  fails if any p-value is below ``alpha_test``; a difference that the exact rule would let
  through never fails it. :func:`compare_pooled` adds the t-tests of one output up over
  all its input sets, where a small shift that every input shares (a scaled last layer)
  shows.

numpy only (scipy for the statistical test): the torch-free parity gate uses this module.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._defaults import DEFAULT_ALPHA, DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_SAMPLES, MAX_SAMPLES

__all__ = ["Measures", "Comparison", "Evidence", "compare_exact", "compare_statistical", "statistical_evidence",
           "compare_pooled", "compare_statistical_verdict", "STAT_NAMES", "POOLED_STATS", "DEFAULT_ALPHA", "DEFAULT_SAMPLES", "DEFAULT_ATOL",
           "DEFAULT_RTOL", "Tolerances", "tolerances", "parse_tolerance", "SEEDING", "onnxruntime_seed",
           "anchor_count", "MAX_SAMPLES", "check_draw_options", "TOLERANCE_DEFAULTS"]

KS_STATS = ("rms_distance", "mean_offset", "projection")  # distribution tests (Kolmogorov-Smirnov)
MOMENT_STATS = ("centre_mean", "offset_mean", "spread_mean", "element_means")  # mean tests (Welch t)
STAT_NAMES = KS_STATS + MOMENT_STATS  # every test of one statistical comparison, in Bonferroni's count
POOLED_STATS = MOMENT_STATS  # the tests also run once per output over all input sets together
STAT_TEXT = {
    "rms_distance": "the distribution of the RMS distance to the reference centre (KS)",
    "mean_offset": "the distribution of the mean offset from the reference centre (KS)",
    "projection": "the distribution of a random projection (KS)",
    "centre_mean": "the mean along the reference centre's direction (Welch t)",
    "offset_mean": "the mean offset of all values (Welch t)",
    "spread_mean": "the mean squared distance to the reference centre (Welch t)",
    "element_means": "the mean of a single value (Welch t per value, Bonferroni over values)",
}


# The scheme that turns ``seed`` into draws; part of every report's ``reproduce``. The
# reference's draws of input set i start from base = (seed + 1) * 1000003 + i * 10007, the
# k draws first and the anchor draws after them: batched under torch.func.vmap where the
# model allows it (chunk c of VMAP_CHUNK draws under torch.manual_seed(base + c);
# ``reproduce["draws"] == "vmap"``), else one call per draw (draw d under
# torch.manual_seed(base + d); "loop"). The random inputs come from numpy's
# default_rng(seed), and onnxruntime's session is created right after
# onnxruntime.set_seed(onnxruntime_seed(seed)), its runs made in a fixed order.
SEEDING = 2


def onnxruntime_seed(seed: int) -> int:
    """The seed onnxruntime's random operators get for a check run with ``seed``: derived
    from it, so that the draws of both sides are fixed by ``seed`` alone."""
    digest = hashlib.sha256(f"hookwrap-onnxruntime-draws:{seed}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


TOLERANCE_DEFAULTS = {"atol": DEFAULT_ATOL, "rtol": DEFAULT_RTOL}


def check_draw_options(samples: Any, seed: Any) -> None:
    """Validate ``samples`` (None, or 4 to :data:`MAX_SAMPLES`) and ``seed`` (0 to 2**63 - 1)
    for ``check_parity`` and ``record`` alike, before any work.

    Raises:
        InvalidArgumentError: either is out of range or not an integer.
    """
    from .errors import InvalidArgumentError

    if samples is not None and (not isinstance(samples, int) or isinstance(samples, bool)
                                or not 4 <= samples <= MAX_SAMPLES):
        raise InvalidArgumentError(f"samples must be an integer from 4 to {MAX_SAMPLES}, got {samples!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise InvalidArgumentError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")


def anchor_count(k: int) -> int:
    """The reference draws used only for the centre of the statistics, for ``k`` draws."""
    return max(k // 2, 8)


@dataclass(frozen=True)
class Tolerances:
    """One tolerance (``atol`` or ``rtol``): a default, and values for named outputs, as
    Polygraphy takes them (``--atol logits=1e-3 --atol 1e-4``)."""

    default: float
    per_output: dict[str, float] = field(default_factory=dict)

    def of(self, output: str) -> float:
        return self.per_output.get(output, self.default)

    def to_json(self) -> float | dict[str, float]:
        """A float when there is no per-output value, else ``{"*": default, name: value}``."""
        return self.default if not self.per_output else {"*": self.default, **self.per_output}

    def __str__(self) -> str:
        extra = ", ".join(f"{k}={v:g}" for k, v in self.per_output.items())
        return f"{self.default:g}" + (f" ({extra})" if extra else "")


def _finite(name: str, value: Any) -> float:
    from .errors import InvalidArgumentError

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def tolerances(value: Any, name: str, default: float) -> Tolerances:
    """A :class:`Tolerances` from a number, a mapping ``{output name: number}`` (the key ``"*"``
    gives the default for the other outputs) or an existing one; ``default`` where none is
    given.

    Raises:
        InvalidArgumentError: a value is not a finite number >= 0, or a key is not a string.
    """
    from .errors import InvalidArgumentError

    if value is None:
        return Tolerances(default)
    if isinstance(value, Tolerances):
        return value
    if isinstance(value, dict) or hasattr(value, "items"):
        items = dict(value.items())
        if not all(isinstance(k, str) and k for k in items):
            raise InvalidArgumentError(f"{name} by output must map output names to numbers, got {value!r}")
        base = _finite(f"{name}['*']", items.pop("*")) if "*" in items else default
        return Tolerances(base, {k: _finite(f"{name}[{k!r}]", v) for k, v in items.items()})
    return Tolerances(_finite(name, value))


def parse_tolerance(items: list[str] | None, name: str) -> Tolerances | None:
    """The command line's ``--atol 1e-4 --atol logits=1e-3``: a default and per-output values.

    Raises:
        InvalidArgumentError: an item is not ``number`` or ``output=number``.
    """
    from .errors import InvalidArgumentError

    if not items:
        return None
    mapping: dict[str, float] = {}
    for item in items:
        key, _, number = item.rpartition("=") if "=" in item else ("*", "", item)
        try:
            mapping[key] = float(number)
        except ValueError:
            raise InvalidArgumentError(f"--{name} takes a number or output=number, got {item!r}") from None
    return tolerances(mapping, name, TOLERANCE_DEFAULTS[name])


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


def _draw_stats(draws: np.ndarray, centre: np.ndarray, signs: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Per draw: RMS distance to the centre, mean offset, projection on the random signs,
    projection on the centre's direction, and mean squared distance."""
    dev = draws - centre
    sq = np.mean(dev**2, axis=1)
    return np.stack([np.sqrt(sq), np.mean(dev, axis=1), np.mean(dev * signs, axis=1), dev @ axis, sq], axis=1)


def _ks(x: np.ndarray, y: np.ndarray, floor: float) -> float:
    """Two-sample Kolmogorov-Smirnov p-value of ``x`` against ``y``, the larger of the plain
    test and the test with ``y`` moved towards ``x`` by at most ``floor`` (how far the exact
    rule's tolerance can move this statistic): a shift within it is not a difference."""
    from scipy.stats import ks_2samp

    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return 1.0 if abs(float(x[0]) - float(y[0])) <= floor else 0.0
    p = float(ks_2samp(x, y).pvalue)
    move = float(np.clip(np.median(x) - np.median(y), -floor, floor))
    return max(p, float(ks_2samp(x, y + move).pvalue)) if move else p


def _welch(x: np.ndarray, y: np.ndarray, floor: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Welch t-tests of ``mean(y) - mean(x)`` along axis 0 (value by value for
    2-D arrays): the p-values, and the same evidence as signed normal scores (for pooling
    over input sets). A difference of means within ``floor`` (what the exact rule lets
    through) is never significant; without spread on either side, any larger one is."""
    from scipy.stats import norm
    from scipy.stats import t as student

    nx, ny = len(x), len(y)
    diff = y.mean(axis=0) - x.mean(axis=0)
    vx, vy = x.var(axis=0, ddof=1) / nx, y.var(axis=0, ddof=1) / ny
    se2 = vx + vy
    with np.errstate(divide="ignore", invalid="ignore"):
        tstat = np.abs(diff) / np.sqrt(se2)
        df = se2**2 / (vx**2 / (nx - 1) + vy**2 / (ny - 1))
        p = np.where(se2 > 0, 2 * student.sf(tstat, np.where(np.isfinite(df), df, nx + ny - 2)), 0.0)
    p = np.asarray(np.where(np.abs(diff) <= floor, 1.0, p), dtype=np.float64)
    return p, np.sign(diff) * norm.isf(p / 2)


@dataclass(frozen=True)
class Evidence:
    """What one statistical comparison measured: p-values of every test, the mean tests'
    signed normal scores (:func:`compare_pooled` adds them up over input sets), and the
    figures a report shows."""

    pvalues: dict[str, float]
    scores: dict[str, float]
    element_scores: np.ndarray
    statistics: dict[str, float]
    nan_mismatch: int
    mean_diff: np.ndarray


def statistical_evidence(ref: np.ndarray, anchor: np.ndarray, got: np.ndarray, seed: int, *,
                         atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> Evidence | Comparison:
    """The tests of :func:`compare_statistical`, before a verdict (a failed
    :class:`Comparison` when the shapes differ)."""
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
    norm = float(np.linalg.norm(centre))
    axis = centre / norm if norm > 0 else np.zeros_like(centre)
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=centre.shape)
    sr, sg = _draw_stats(r, centre, signs, axis), _draw_stats(g, centre, signs, axis)
    # How far each statistic can move when every value moves within the exact rule's tolerance.
    tol = atol + rtol * np.abs(centre)
    spread = float(np.mean(np.abs(r - centre))) if r.size else 0.0
    floors = [float(np.sqrt(np.mean(tol**2))) if tol.size else 0.0, float(np.mean(tol)) if tol.size else 0.0]
    floors += [floors[1], float(np.linalg.norm(tol)),
               float(2 * spread * np.max(tol, initial=0.0) + (np.mean(tol**2) if tol.size else 0.0))]
    pvalues = {name: _ks(sr[:, i], sg[:, i], floors[i]) for i, name in enumerate(KS_STATS)}
    scores = {}
    for name, column in (("centre_mean", 3), ("offset_mean", 1), ("spread_mean", 4)):
        p, z = _welch(sr[:, column], sg[:, column], floors[column])
        pvalues[name], scores[name] = float(p), float(z)
    p_elements, element_scores = _welch(r, g, tol) if r.size else (np.ones(0), np.zeros(0))
    pvalues["element_means"] = float(min(1.0, p_elements.min(initial=1.0) * max(1, p_elements.size)))
    spread_r, spread_g = float(sr[:, 0].mean()), float(sg[:, 0].mean())
    statistics = {**{f"p_{k}": pvalues[k] for k in STAT_NAMES}, "spread_reference": spread_r,
                  "spread_onnx": spread_g, "spread_ratio": spread_g / spread_r if spread_r > 0 else math.inf,
                  "centre_shift": float((sg[:, 3].mean() - sr[:, 3].mean()) / norm) if norm > 0 else 0.0}
    return Evidence(pvalues, scores, element_scores, statistics, nan_mismatch, np.abs(r.mean(axis=0) - g.mean(axis=0)))


def _verdict(pvalues: dict[str, float], statistics: dict[str, float], nan_mismatch: int, mean_diff: np.ndarray,
             alpha_test: float, what: str) -> Comparison:
    p_value = min(pvalues.values())
    passed = p_value >= alpha_test and nan_mismatch == 0
    message = "ok"
    if not passed:
        worst = min(pvalues, key=lambda k: pvalues[k])
        message = f"the ONNX draws do not follow the reference distribution{what}: {STAT_TEXT[worst]} differs " \
                  f"(p={p_value:.3g} < {alpha_test:.3g})"
        if "spread_ratio" in statistics:
            message += (f"; spread onnx/reference = {statistics['spread_ratio']:.3g}, mean along the reference's "
                        f"centre shifted by {100 * statistics['centre_shift']:.3g}% of its norm")
        if nan_mismatch:
            message += f"; NaNs differ at {nan_mismatch} positions"
    return Comparison(
        passed=passed, message=message, max_abs_diff=float(mean_diff.max()) if mean_diff.size else 0.0,
        mean_abs_diff=float(mean_diff.mean()) if mean_diff.size else 0.0, nan_mismatch=nan_mismatch,
        p_value=p_value, alpha_per_test=alpha_test, statistics=statistics)


def compare_statistical(ref: np.ndarray, anchor: np.ndarray, got: np.ndarray, alpha_test: float,
                        seed: int, *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> Comparison:
    """Compare draws (first axis) of the reference and of the ONNX model; ``anchor`` holds
    further reference draws, used only for the centre. Fails when any of the
    :data:`STAT_NAMES` tests has a p-value below ``alpha_test``. Differences that the exact
    rule ``atol + rtol * |ref|`` would let through never fail it.

    Example:
        >>> compare_statistical(ref_draws, anchor_draws, onnx_draws, 1e-4, seed=0).passed
        True
    """
    evidence = statistical_evidence(ref, anchor, got, seed, atol=atol, rtol=rtol)
    if isinstance(evidence, Comparison):
        return evidence
    return compare_statistical_verdict(evidence, alpha_test)


def compare_statistical_verdict(evidence: Evidence, alpha_test: float) -> Comparison:
    """The verdict of one :func:`statistical_evidence`: it fails when any p-value is below
    ``alpha_test`` or NaNs sit in different places."""
    return _verdict(evidence.pvalues, evidence.statistics, evidence.nan_mismatch, evidence.mean_diff, alpha_test, "")


def compare_pooled(evidence: list[Evidence], alpha_test: float) -> Comparison:
    """The mean tests (:data:`POOLED_STATS`) of one output pooled over its input sets
    (Stouffer's sum of the signed normal scores): a fault that moves the mean a little on
    every input, such as a scaled last layer, adds up. Values are pooled only when every
    set compares the same number of them.

    Example:
        >>> compare_pooled([statistical_evidence(r, a, g, seed=i) for i, (r, a, g) in enumerate(sets)], 1e-4)
    """
    from scipy.stats import norm

    n = len(evidence)
    pvalues: dict[str, float] = {}
    for name in POOLED_STATS[:-1]:
        total = sum(e.scores[name] for e in evidence) / math.sqrt(n)
        pvalues[name] = float(2 * norm.sf(abs(total))) if not math.isnan(total) else 0.0
    sizes = {e.element_scores.size for e in evidence}
    if len(sizes) == 1 and sizes != {0}:
        with np.errstate(invalid="ignore"):
            total_elements = np.sum([e.element_scores for e in evidence], axis=0) / math.sqrt(n)
        worst = float(np.nanmax(np.abs(total_elements))) if not np.isnan(total_elements).all() else math.inf
        pvalues["element_means"] = float(min(1.0, 2 * norm.sf(worst) * total_elements.size))
    else:
        pvalues["element_means"] = 1.0
    statistics = {f"p_{k}_pooled": v for k, v in pvalues.items()}
    diffs = np.concatenate([e.mean_diff for e in evidence]) if evidence else np.zeros(0)
    return _verdict(pvalues, statistics, 0, diffs, alpha_test,  # NaNs fail each set's own check
                    f" over all {n} input sets together")
