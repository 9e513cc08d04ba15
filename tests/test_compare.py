"""hookwrap.compare: tolerances, and the statistical tests on synthetic draws with fixed seeds.

Every case here is exact: numpy's seeded generator fixes the draws, so a verdict is the same
on every run. The rates (false alarms over independent seeds, detection of planted faults in
real models) are measured in benchmarks/bench_power.py.
"""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest

import hookwrap as hw
from hookwrap import compare
from hookwrap.compare import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    STAT_NAMES,
    Evidence,
    compare_exact,
    compare_pooled,
    compare_statistical,
    compare_statistical_verdict,
    parse_tolerance,
    statistical_evidence,
    tolerances,
)

ALPHA_TEST = compare.DEFAULT_ALPHA / len(STAT_NAMES)  # one input set, one output


# -- tolerances ---------------------------------------------------------------------------


def test_one_home_for_the_defaults():
    from hookwrap import _defaults

    assert (DEFAULT_ATOL, DEFAULT_RTOL) == (_defaults.DEFAULT_ATOL, _defaults.DEFAULT_RTOL) == (1e-4, 1e-3)
    for name in ("parity", "golden", "bisect", "cli"):
        module = importlib.import_module(f"hookwrap.{name}")
        code = re.sub(r'""".*?"""', "", open(module.__file__).read(), flags=re.S)  # docstrings may quote them
        assert not re.search(r"(atol|rtol|default)[^\n]{0,30}=\s*1e-[34]\b", code), module.__name__


def test_tolerances_from_a_number_a_mapping_or_nothing():
    assert tolerances(None, "atol", 1e-4).of("any") == 1e-4
    assert tolerances(2e-3, "atol", 1e-4).of("any") == 2e-3
    per = tolerances({"logits": 1e-2, "*": 1e-5}, "atol", 1e-4)
    assert (per.of("logits"), per.of("features"), per.default) == (1e-2, 1e-5, 1e-5)
    assert tolerances({"logits": 1e-2}, "atol", 1e-4).of("features") == 1e-4
    assert per.to_json() == {"*": 1e-5, "logits": 1e-2} and tolerances(3e-4, "atol", 0).to_json() == 3e-4


@pytest.mark.parametrize("bad", [-1e-4, float("nan"), float("inf"), True, "1e-4", None.__class__, [1e-4],
                                 {"logits": -1.0}, {"logits": float("nan")}, {1: 1e-3}, {"": 1e-3}])
def test_a_tolerance_must_be_finite_and_non_negative(bad):
    with pytest.raises(hw.InvalidArgumentError, match="atol"):
        tolerances(bad, "atol", 1e-4)


def test_parse_tolerance_takes_polygraphy_syntax():
    parsed = parse_tolerance(["logits=1e-3", "1e-5", "feat=0"], "atol")
    assert parsed is not None
    assert (parsed.default, parsed.per_output) == (1e-5, {"logits": 1e-3, "feat": 0.0})
    assert parse_tolerance(["logits=0.1"], "rtol").default == DEFAULT_RTOL  # type: ignore[union-attr]
    assert parse_tolerance(None, "atol") is None
    for bad in ("logits=", "x", "logits=-1", "=1e-3", "nan"):
        with pytest.raises(hw.InvalidArgumentError):
            parse_tolerance([bad], "atol")


def test_compare_exact_reports_the_tolerance_that_would_have_passed():
    ref = np.array([1.0, 2.0, 4.0], np.float32)
    got = ref + np.array([0.0, 0.01, 0.0], np.float32)
    failed = compare_exact(ref, got, DEFAULT_ATOL, DEFAULT_RTOL)
    assert not failed and failed.mismatch_fraction == pytest.approx(1 / 3)
    assert compare_exact(ref, got, failed.required_atol, DEFAULT_RTOL)
    assert not compare_exact(ref, got, failed.required_atol * 0.99, DEFAULT_RTOL)


# -- statistical tests on synthetic draws ---------------------------------------------------


def draws(rng: np.random.Generator, centre: np.ndarray, k: int, *, sigma: float = 0.5, scale: float = 1.0,
          shift: float = 0.0, element: tuple[int, float] | None = None) -> np.ndarray:
    """k draws around ``centre``, with noise ``sigma`` times the centre's mean magnitude
    (about the MC-dropout noise of the seed model), and an optional planted fault."""
    d = centre + sigma * np.abs(centre).mean() * rng.standard_normal((k, centre.size))
    d = d * scale + shift
    if element is not None:
        d[:, element[0]] += element[1]
    return d.astype(np.float32)


def case(seed: int, **fault) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference draws, anchor draws and ONNX draws (with ``fault``) of one input set."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal(50)
    return draws(rng, centre, 128), draws(rng, centre, 64), draws(rng, centre, 128, **fault)


def evidence(seed: int, **fault) -> Evidence:
    found = statistical_evidence(*case(seed, **fault), seed)
    assert isinstance(found, Evidence)
    return found


@pytest.mark.parametrize("seed", range(10))
def test_the_same_distribution_passes_for_fixed_seeds(seed):
    result = compare_statistical(*case(seed), ALPHA_TEST, seed)
    assert result, result.message
    again = compare_statistical(*case(seed), ALPHA_TEST, seed)
    assert again.statistics == result.statistics  # the same draws give the same numbers


@pytest.mark.parametrize("fault, test", [
    ({"sigma": 0.75}, ("spread_mean", "rms_distance")),  # more noise (a dropout rate that grew)
    ({"shift": 0.15}, ("offset_mean",)),  # every value moved (a bias)
    ({"scale": 1.25}, ("centre_mean",)),  # every value scaled (a scaled layer)
    ({"element": (3, 0.8)}, ("element_means",)),  # one value moved (one weight)
], ids=["spread", "offset", "scale", "one-value"])
def test_each_planted_fault_is_seen_by_the_test_made_for_it(fault, test):
    for seed in range(10):
        found = evidence(seed, **fault)
        result = compare_statistical_verdict(found, ALPHA_TEST)
        assert not result and "do not follow the reference distribution" in result.message
        assert min(found.pvalues, key=lambda name: found.pvalues[name]) in test, found.pvalues


def test_pooling_over_input_sets_sees_a_shift_that_no_set_sees_alone():
    """Every value scaled by 1.02: with these seeds no single input set's tests see it at
    their share of alpha, and the pooled mean along the centre does."""
    per_set, pooled = compare.DEFAULT_ALPHA / 2 / (4 * len(STAT_NAMES)), compare.DEFAULT_ALPHA / 2 / 4
    sets = [evidence(seed, scale=1.02) for seed in range(4)]
    assert all(compare_statistical_verdict(e, per_set) for e in sets)
    result = compare_pooled(sets, pooled)
    assert not result and "over all 4 input sets together" in result.message
    assert result.statistics["p_centre_mean_pooled"] < pooled
    assert compare_pooled([evidence(seed) for seed in range(4)], pooled)


def test_pooled_values_need_sets_of_one_size():
    small = statistical_evidence(*(a[:, :10] for a in case(0, element=(3, 5.0))), 0)
    assert isinstance(small, Evidence)
    result = compare_pooled([evidence(1), small], 1e-3)
    assert result.statistics["p_element_means_pooled"] == 1.0


def test_differences_within_the_exact_rule_never_fail():
    """A constant offset of 0.9 x (atol + rtol |ref|) on tiny noise is highly significant,
    yet the exact rule would pass it, so the statistical check passes it too; 1.5 x fails."""
    rng = np.random.default_rng(0)
    centre = rng.standard_normal(20)
    noise = lambda k: 1e-7 * rng.standard_normal((k, centre.size))  # noqa: E731
    ref, anchor = centre + noise(64), centre + noise(32)
    tol = DEFAULT_ATOL + DEFAULT_RTOL * np.abs(centre)
    assert compare_statistical(ref, anchor, centre + 0.9 * tol + noise(64), ALPHA_TEST, 0)
    assert not compare_statistical(ref, anchor, centre + 1.5 * tol + noise(64), ALPHA_TEST, 0)
    loose = compare_statistical(ref, anchor, centre + 1.5 * tol + noise(64), ALPHA_TEST, 0, atol=1.0)
    assert loose, loose.message


def test_deterministic_draws_compare_by_value():
    ref = np.ones((8, 5))
    assert compare_statistical(ref, ref[:4], ref.copy(), ALPHA_TEST, 0)
    assert not compare_statistical(ref, ref[:4], ref + 0.5, ALPHA_TEST, 0)


def test_nans_in_other_places_and_other_shapes_fail():
    ref, anchor, got = case(0)
    got = got.copy()
    got[:, 7] = np.nan
    result = compare_statistical(ref, anchor, got, ALPHA_TEST, 0)
    assert not result and "NaNs differ at 1 positions" in result.message
    assert not compare_statistical(ref, anchor, got[:, :10], ALPHA_TEST, 0)


def test_seeding_is_a_fixed_function_of_the_seed():
    seeds = {compare.onnxruntime_seed(s) for s in range(1000)}
    assert len(seeds) == 1000 and all(0 <= s < 2**56 for s in seeds)
    assert compare.onnxruntime_seed(7) == compare.onnxruntime_seed(7)
    assert compare.anchor_count(128) == 64 and compare.anchor_count(4) == 8
