"""Fuzzing the loader: every mutated file loads or raises a HookwrapError, quickly, and
imports nothing new. (make bench runs thousands of cases; this runs a few hundred.)"""

from __future__ import annotations

from collections import Counter

import pytest
from fuzzing import check_case, mutated, seed_file
from helpers import small_cnn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hookwrap as hw


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    path = seed_file(folder)
    hw.load(path, base=small_cnn())  # warm up: lazy imports happen here, not in the cases
    return folder, path.read_bytes()


def test_mutated_files_load_or_raise_hookwrap_errors(seed):
    folder, raw = seed
    outcomes: Counter = Counter()

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def case(data):
        kind, payload = data.draw(mutated(raw))
        outcomes[(kind, check_case(folder / "case.safetensors", payload))] += 1

    case()
    kinds = {k for k, _ in outcomes}
    assert kinds == {"header-bytes", "manifest", "tensor-table", "data", "length"}, outcomes
    assert sum(n for (_, o), n in outcomes.items() if o == "refused") > 100, outcomes
