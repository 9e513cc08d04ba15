"""Prove that an ONNX file computes what the original, hooked eager model computes.

``check_parity`` is a short orchestrator over single-concern modules:

* the reference side: the eager model, hooks and all, in eval mode
  (:mod:`hookwrap.reference`), or a golden file recorded from it (:mod:`hookwrap.golden`),
  which needs no torch;
* the inputs (:mod:`hookwrap.parity_inputs`);
* the comparison of each output (:mod:`hookwrap.compare`): the ``numpy.allclose`` rule
  ``|onnx - ref| <= atol + rtol * |ref|`` for deterministic models, two-sample
  Kolmogorov-Smirnov tests over ``samples`` draws per side for stochastic ones (the
  reference varies under another seed, or the graph has random operators: either is
  enough), with a Bonferroni correction so that a whole check raises a false alarm with
  probability at most ``alpha`` (default 0.002);
* the report (:mod:`hookwrap.parity_report`), with ``warnings`` for verdicts that mean
  little (a check that could not fail, too few draws, untrained reference weights).

This module imports neither torch nor torchvision at import time; a golden reference
keeps it that way.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from . import parity_inputs as PI
from ._onnx import open_session, read_onnx, run_session
from ._version import __version__
from .compare import (
    DEFAULT_ALPHA,
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    DEFAULT_SAMPLES,
    POOLED_STATS,
    SEEDING,
    STAT_NAMES,
    TOLERANCE_DEFAULTS,
    Comparison,
    Evidence,
    Tolerances,
    anchor_count,
    check_draw_options,
    compare_exact,
    compare_pooled,
    compare_statistical_verdict,
    onnxruntime_seed,
    statistical_evidence,
    tolerances,
)
from .errors import HookwrapError, InvalidArgumentError, ParityError
from .parity_report import POOLED, OutputCheck, ParityReport

__all__ = ["check_parity", "assert_parity", "ParityReport", "OutputCheck", "DEFAULT_ALPHA", "DEFAULT_SAMPLES",
           "ReferenceSide", "vacuous_warnings", "draws_warning", "onnxruntime_seed", "anchor_count", "SEEDING"]

# The KS statistic (the largest gap between the two sides' distribution functions) that the
# statistical test must be able to see: a lost dropout moves it to about 1, a dropout rate
# off by 0.1 to about 0.6. Fewer draws than that needs is a warning.
TARGET_KS_EFFECT = 0.6


class ReferenceSide(Protocol):
    """What a parity check compares against: a model run now, or a recorded golden file."""

    kind: str
    inputs: PI.InputSets
    stochastic: bool
    warnings: list[str]

    def exact(self, index: int) -> list[np.ndarray]: ...

    def draws(self, index: int, k: int, n_anchor: int) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]: ...


@dataclass(frozen=True)
class _Options:
    atol: Tolerances
    rtol: Tolerances
    samples: int | None
    seed: int
    alpha: float

    def __post_init__(self) -> None:
        check_draw_options(self.samples, self.seed)
        if not (isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool) and 0 < self.alpha < 1):
            raise InvalidArgumentError(f"alpha must be in (0, 1), got {self.alpha!r}")


def check_parity(
    reference: Any,
    onnx_path: str | os.PathLike[str],
    inputs: Any = None,
    *,
    atol: float | Mapping[str, float] | None = None,
    rtol: float | Mapping[str, float] | None = None,
    samples: int | None = None,
    seed: int | None = None,
    random_inputs: int = 3,
    alpha: float = DEFAULT_ALPHA,
    weights: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    override_tolerance: bool = False,
) -> ParityReport:
    """Check that ``onnx_path`` computes what the eager ``reference`` computes.

    Args:
        reference: the original eager model, hooks and all (run in eval mode; it is left as
            it was), or the path of a golden ``.npz`` written by :func:`hookwrap.record`
            (then torch is not needed, and the golden file's inputs are used).
        onnx_path: the exported ``.onnx`` file.
        inputs: one tuple (the example: it and ``random_inputs`` random sets with the
            same shapes and dtypes are used, the last one at another batch size when the
            ONNX batch is dynamic), a list of tuples (used as given), or a path to an
            ``.npz``. ``None`` generates inputs from the ONNX input signature.
        atol, rtol: tolerances of the element-wise rule ``|onnx-ref| <= atol + rtol*|ref|``
            (default :data:`~hookwrap.compare.DEFAULT_ATOL` 1e-4 and ``DEFAULT_RTOL`` 1e-3, or
            those a golden file records): a number, or a mapping from output name to
            number, as Polygraphy takes them (the key ``"*"`` sets the other outputs').
            A statistical check never fails on a difference within them.
        samples: draws per side for stochastic models (default ``DEFAULT_SAMPLES``, 256).
        seed: fixes every random choice of the check: the random inputs, the reference's
            draws, and onnxruntime's random operators (seeded with
            :func:`~hookwrap.compare.onnxruntime_seed`), so that the same model, file,
            inputs and seed give the same report. Default 0, or the seed a golden file was
            recorded with (its check then reports what the model's own check reported).
        random_inputs: how many random input sets to add to an example.
        alpha: family-wise false-alarm bound of the statistical test.
        weights: a safetensors file whose tensors a copy of ``reference`` gets (as a plain
            state dict; wrapper-owned keys are ignored): ``reference`` itself is not changed.
        progress: called as ``progress(done, total)`` while running.
        override_tolerance: with a golden file, allow ``atol``/``rtol`` looser than the
            ones it records for some output (the report's ``tolerance_override`` says so);
            without it, a looser tolerance is an error, so that a gate cannot be loosened
            by a command-line flag unnoticed.

    Returns:
        A :class:`ParityReport`, truthy when parity holds; ``warnings`` says when the
        verdict means little.

    Raises:
        InvalidArgumentError: bad arguments, or inputs that do not fit the ONNX model.
        HookwrapError: the ONNX file (or golden file) cannot be opened or is unsafe.

    Example:
        >>> report = hw.check_parity(hooked_model, "m.onnx", (x,))
        >>> bool(report), report.checks[0].max_abs_diff
    """
    try:
        return _check_parity(reference, onnx_path, inputs, atol, rtol, samples, seed, random_inputs, alpha, weights,
                             progress, override_tolerance)
    except HookwrapError:
        raise
    except Exception as exc:  # every failure is a HookwrapError, with what failed
        raise HookwrapError(f"check_parity of {os.fspath(onnx_path)!r} failed: {type(exc).__name__}: {exc}") from exc


def _check_parity(reference: Any, onnx_path: str | os.PathLike[str], inputs: Any, atol: Any, rtol: Any,
                  samples: int | None, seed: int | None, random_inputs: int, alpha: float,
                  weights: str | os.PathLike[str] | None, progress: Callable[[int, int], None] | None,
                  override_tolerance: bool = False) -> ParityReport:
    start = time.perf_counter()
    if seed is None:
        seed = 0
        if isinstance(reference, (str, os.PathLike)):
            from .golden import recorded_seed

            seed = recorded_seed(reference)
    options = _Options(tolerances(atol, "atol", DEFAULT_ATOL), tolerances(rtol, "rtol", DEFAULT_RTOL), samples, seed,
                       alpha)
    onnx_file = read_onnx(onnx_path, graph=False)
    session = open_session(onnx_file, seed=onnxruntime_seed(seed))
    sig = PI.signature(session)
    random_ops = onnx_file.random_ops
    side = _reference_side(reference, inputs, sig, options, random_inputs, weights)
    recorded = getattr(side, "tolerances", {})
    options = _Options(options.atol if atol is not None else tolerances(recorded.get("atol"), "atol", DEFAULT_ATOL),
                       options.rtol if rtol is not None else tolerances(recorded.get("rtol"), "rtol", DEFAULT_RTOL),
                       samples, seed, alpha)
    statistical = side.stochastic or bool(random_ops)
    k = samples or getattr(side, "samples", None) or DEFAULT_SAMPLES
    out_names = [o.name for o in session.get_outputs()]
    unknown = sorted((set(options.atol.per_output) | set(options.rtol.per_output)) - set(out_names))
    if unknown:
        raise InvalidArgumentError(f"a tolerance names output {unknown[0]!r}, which the ONNX model does not have; "
                                   f"its outputs are {out_names}")
    looser = _looser(recorded, options, out_names) if side.kind == "golden" else None
    if looser and not override_tolerance:
        raise InvalidArgumentError(f"{looser}; pass --override-tolerance (override_tolerance=True) to loosen the "
                                   f"golden file's tolerance")
    running = getattr(side, "running", None)
    with running() if running is not None else contextlib.nullcontext():
        checks = _run_checks(side, session, sig, out_names, statistical, k, options, progress)
    differences = side.interface_differences(session) if hasattr(side, "interface_differences") else []
    if differences:  # a renamed, added or missing input or output, or a dynamic axis made fixed
        checks.insert(0, OutputCheck(
            input=POOLED, output="<interface>", output_index=-1, mode="statistical" if statistical else "exact",
            passed=False, message="the ONNX model's interface is not the one the golden file was recorded against: "
                                  + "; ".join(differences), reference_shape=[], onnx_shape=None, reference_dtype="",
            onnx_dtype=None))
    report = ParityReport(
        passed=bool(checks) and all(c.passed for c in checks), mode="statistical" if statistical else "exact",
        onnx=str(onnx_path), atol=options.atol.default, rtol=options.rtol.default, seed=seed, checks=checks,
        inputs=side.inputs.describe(), stochastic_reference=side.stochastic, random_ops=random_ops,
        alpha=float(options.alpha) if statistical else None, samples=k if statistical else None,
        seconds=time.perf_counter() - start, notes=_notes(side.stochastic, random_ops), reference=side.kind,
        atol_per_output=dict(options.atol.per_output), rtol_per_output=dict(options.rtol.per_output),
        reproduce=_reproduce(side, seed, k if statistical else None, random_inputs), tolerance_override=bool(looser))
    report.warnings = [*side.warnings, *(_statistical_warnings(report) if statistical else vacuous_warnings(report))]
    return report


def _looser(recorded: dict[str, Any], options: _Options, out_names: list[str]) -> str | None:
    """What a given tolerance loosens against a golden file's, or None."""
    for name in ("atol", "rtol"):
        mine = getattr(options, name)
        theirs = tolerances(recorded.get(name), name, TOLERANCE_DEFAULTS[name])
        for out in out_names:
            if mine.of(out) > theirs.of(out):
                return f"{name} {mine.of(out):g} for output {out!r} is looser than the golden file's {theirs.of(out):g}"
    return None


def _reproduce(side: ReferenceSide, seed: int, k: int | None, random_inputs: int) -> dict[str, Any]:
    """What a verdict depends on besides the model, the ONNX file and the inputs."""
    import onnxruntime
    import scipy

    versions = {"hookwrap": __version__, "numpy": np.__version__, "scipy": scipy.__version__,
                "onnxruntime": onnxruntime.__version__, "torch": getattr(side, "torch_version", None)}
    return {"seed": seed, "onnxruntime_seed": onnxruntime_seed(seed), "samples": k,
            "anchor": anchor_count(k) if k else None, "seeding": SEEDING, "draws": getattr(side, "draw_mode", None),
            "random_inputs": random_inputs if side.kind == "model" else None, "versions": versions}


def _reference_side(reference: Any, inputs: Any, sig: PI.Signature, options: _Options, random_inputs: int,
                    weights: Any) -> ReferenceSide:
    if isinstance(reference, (str, os.PathLike)):
        from .golden import GoldenSide

        if inputs is not None or weights is not None:
            raise InvalidArgumentError("a golden file holds its own inputs and outputs: pass neither inputs nor "
                                       "weights with it")
        return GoldenSide.open(reference, sig)
    from .reference import model_side

    return model_side(reference, inputs, sig, seed=options.seed, random_inputs=random_inputs, weights=weights)


def _alphas(alpha: float, n_sets: int, n_out: int) -> tuple[float, float]:
    """Bonferroni's split of the family-wise ``alpha``: per test of one input set and
    output, and per pooled test of one output. With two or more sets, half of ``alpha``
    goes to the pooled tests, which see small shifts that every input shares."""
    if n_sets < 2:
        return alpha / max(1, n_out * len(STAT_NAMES)), 0.0
    return alpha / 2 / max(1, n_sets * n_out * len(STAT_NAMES)), alpha / 2 / max(1, n_out * len(POOLED_STATS))


def _run_checks(side: ReferenceSide, session: Any, sig: PI.Signature, out_names: list[str], statistical: bool,
                k: int, options: _Options, progress: Callable[[int, int], None] | None) -> list[OutputCheck]:
    n_anchor = anchor_count(k)
    per_input = (2 * k + n_anchor) if statistical else 2
    total = per_input * len(side.inputs.sets)
    alpha_test, alpha_pooled = _alphas(options.alpha, len(side.inputs.sets), len(out_names))
    checks: list[OutputCheck] = []
    evidence: dict[int, list[Evidence]] = {j: [] for j in range(len(out_names))}
    for i, arrays in enumerate(side.inputs.sets):
        t0 = time.perf_counter()
        feeds = dict(zip(sig.names, arrays))
        if statistical:
            ref_draws, anchor = side.draws(i, k, n_anchor)
            got_draws = [run_session(session, feeds, what=f"the ONNX model on input set {i}") for _ in range(k)]
            refs: list[np.ndarray] = ref_draws[0]
        else:
            refs, got = side.exact(i), run_session(session, feeds, what=f"the ONNX model on input set {i}")
        if progress:
            progress(per_input * (i + 1), total)
        elapsed = (time.perf_counter() - t0) / max(1, len(out_names))
        mode = "statistical" if statistical else "exact"
        if len(refs) != len(out_names):
            checks.append(OutputCheck(
                input=i, output="<outputs>", output_index=-1, mode=mode, passed=False,
                message=f"the reference returns {len(refs)} tensor output(s), the ONNX model {len(out_names)} "
                        f"{out_names}", reference_shape=[], onnx_shape=None, reference_dtype="", onnx_dtype=None,
                seconds=elapsed))
            continue
        for j, name in enumerate(out_names):
            atol, rtol = options.atol.of(name), options.rtol.of(name)
            if statistical:
                comparison = _statistical(ref_draws, anchor, got_draws, j, options.seed + j, atol, rtol)
                if isinstance(comparison, Evidence):
                    evidence[j].append(comparison)
                    comparison = compare_statistical_verdict(comparison, alpha_test)
                ref_j, got_j = ref_draws[0][j], got_draws[0][j]
            else:
                ref_j, got_j = refs[j], got[j]
                comparison = compare_exact(ref_j, got_j, atol, rtol)
            checks.append(OutputCheck.of(comparison, input=i, output=name, output_index=j, mode=mode,
                                         reference=ref_j, onnx=got_j, seconds=elapsed, atol=atol, rtol=rtol))
    if statistical and alpha_pooled:
        for j, name in enumerate(out_names):
            if len(evidence[j]) == len(side.inputs.sets):
                checks.append(OutputCheck.of(compare_pooled(evidence[j], alpha_pooled), input=POOLED, output=name,
                                             output_index=j, mode="statistical", reference=None, onnx=None,
                                             seconds=0.0, atol=options.atol.of(name), rtol=options.rtol.of(name)))
    return checks


def _statistical(ref_draws: list, anchor: list, got_draws: list, j: int, seed: int, atol: float,
                 rtol: float) -> Evidence | Comparison:
    if not all(d[j].shape == got_draws[0][j].shape for d in got_draws):
        return Comparison(passed=False, message="the ONNX output shape changes between runs")
    return statistical_evidence(np.stack([d[j] for d in ref_draws]), np.stack([d[j] for d in anchor]),
                                np.stack([d[j] for d in got_draws]), seed, atol=atol, rtol=rtol)


def _notes(stochastic_ref: bool, random_ops: dict[str, int]) -> list[str]:
    notes = []
    if stochastic_ref and not random_ops:
        notes.append("the reference is stochastic but the ONNX graph has no random operators: "
                     "the export may have lost its randomness")
    if random_ops and not stochastic_ref:
        notes.append(f"the ONNX graph has random operators {random_ops} but the reference is deterministic")
    if random_ops.get("Dropout"):
        notes.append("the ONNX graph has Dropout nodes in training mode, which onnxruntime's inference "
                     "build runs as the identity: their randomness is lost (hw.export_onnx writes random "
                     "masks with RandomUniformLike instead)")
    return notes


def vacuous_warnings(report: ParityReport) -> list[str]:
    """A warning for every output whose tolerance would pass any value: when the largest
    reference value ``m`` satisfies ``m * (1 - rtol) <= atol``, an export that returns
    zeros (or lost a scale, a bias or a whole layer) passes this check too."""
    out = []
    largest: dict[str, tuple[float, float, float]] = {}
    for check in report.checks:
        top = check.statistics.get("reference_max_abs") if check.statistics else None
        if top is not None:
            atol = report.atol if check.atol is None else check.atol
            rtol = report.rtol if check.rtol is None else check.rtol
            largest[check.output] = (max(largest.get(check.output, (0.0,))[0], top), atol, rtol)
    for name, (top, atol, rtol) in largest.items():
        if top * (1 - rtol) <= atol:
            suggest = f"atol={top * 1e-3:.2g}" if top > 0 else "a model whose outputs are not all zero"
            if rtol >= 1:
                suggest = f"rtol < 1 (it is {rtol:g}) and {suggest}"
            out.append(f"vacuous check: output {name!r} passes any value, since its largest reference value "
                       f"{top:.3g} is within atol={atol:g} + rtol={rtol:g} * |ref| of zero; a correct export "
                       f"cannot be told from a broken one; pass {suggest} (a thousandth of the largest value), "
                       f"or check a model with trained weights")
    return out


def draws_warning(k: int, alpha_test: float) -> str | None:
    """A warning when ``k`` draws per side cannot show a KS effect of :data:`TARGET_KS_EFFECT`
    at the per-test level ``alpha_test``."""
    c = float(np.sqrt(-np.log(alpha_test / 2) / 2))
    smallest = c * float(np.sqrt(2 / k))
    if smallest <= TARGET_KS_EFFECT:
        return None
    needed = int(np.ceil(2 * c * c / TARGET_KS_EFFECT**2))
    return (f"too few draws: with {k} draws per side and alpha {alpha_test:.3g} per test, the statistical test only "
            f"sees distributions that differ by a KS distance of {smallest:.2f} or more (a dropout rate off by 0.1 "
            f"gives about {TARGET_KS_EFFECT}); use samples >= {needed}")


def _statistical_warnings(report: ParityReport) -> list[str]:
    if report.samples is None or not report.checks:
        return []
    alpha_test = next((c.alpha_per_test for c in report.checks if c.alpha_per_test), None)
    warning = draws_warning(report.samples, alpha_test) if alpha_test else None
    return [warning] if warning else []


def assert_parity(reference: Any, onnx_path: str | os.PathLike[str], inputs: Any = None, **kwargs: Any) -> ParityReport:
    """:func:`check_parity`, raising :class:`~hookwrap.ParityError` (carrying the report) if it fails.

    Example:
        >>> hw.assert_parity(hooked_model, "m.onnx", (x,))   # in a pytest test
    """
    report = check_parity(reference, onnx_path, inputs, **kwargs)
    if not report:
        raise ParityError(report)
    return report
