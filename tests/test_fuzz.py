"""Fuzzing the loader: every mutated file loads or raises a HookwrapError, quickly, imports
nothing new and touches no file; captured graphs that load hold only allowlisted ops.
(make bench runs thousands of cases; this runs a few hundred.)"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from fuzzing import canary_folder, check_case, mutated, seed_file
from helpers import small_cnn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hookwrap as hw


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    path = seed_file(folder)
    hw.load(path, base=small_cnn())(torch.randn(2, 3, 10, 10))  # warm up: lazy imports happen here
    return folder, path.read_bytes(), canary_folder(folder)


def test_mutated_files_load_or_raise_hookwrap_errors(seed):
    folder, raw, canary = seed
    outcomes: Counter = Counter()

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def case(data):
        kind, payload = data.draw(mutated(raw, canary))
        outcomes[(kind, check_case(folder / "case.safetensors", payload, canary))] += 1

    case()
    kinds = {k for k, _ in outcomes}
    assert kinds == {"header-bytes", "manifest", "tensor-table", "data", "length", "graph", "tree-spec"}, outcomes
    assert outcomes[("graph", "loaded")] > 0, outcomes  # allowlisted graphs do load (and run)
    assert sum(n for (_, o), n in outcomes.items() if o == "refused") > 100, outcomes
