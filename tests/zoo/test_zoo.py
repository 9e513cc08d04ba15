"""A few models of the torchvision zoo sweep (make bench sweeps all of them)."""

from __future__ import annotations

import pytest

from zoo.sweep import MAX_PARAMS, count_params, plan, sweep_one


@pytest.mark.parametrize("name", ["squeezenet1_0", "shufflenet_v2_x0_5", "mnasnet0_5"])
def test_zoo_model_passes_the_whole_journey(tmp_path, name):
    row = sweep_one(name, count_params(name), tmp_path / name)
    assert row.passed, f"{row.failed_step}: {row.reason}"
    assert row.parity == "statistical" and row.hooks.startswith("Dropout2d(always)")
    assert set(row.steps) >= {"convert", "save", "load", "export", "parity"}


def test_plan_leaves_out_big_models_with_a_reason():
    keep, left_out = plan(["vit_h_14", "resnet18", "regnet_y_128gf"])
    assert [name for name, _ in keep] == ["resnet18"]
    assert {name for name, _ in left_out} == {"vit_h_14", "regnet_y_128gf"}
    assert all("over the 150 M limit" in why for _, why in left_out)
    assert count_params("vit_h_14") > MAX_PARAMS
