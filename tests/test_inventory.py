"""hw.inventory on real torchvision models with hooks of every kind."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import torch.ao.quantization as tq
from helpers import DropoutHook, build, hook_table
from torch import nn
from torch.nn.modules import module as module_mod
from torch.nn.utils import prune, spectral_norm, weight_norm

import hookwrap as hw
from hookwrap.inventory import KINDS


# Hooks that leave values alone, one per signature PyTorch uses.
def fpre(m, args):
    return None


def fpre_kw(m, args, kwargs):
    return None


def fwd(m, args, out):
    return None


def fwd_kw(m, args, kwargs, out):
    return None


def fwd_always(m, args, out):
    return None


def bpre(m, grad_out):
    return None


def bwd(m, grad_in, grad_out):
    return None


def sd_pre(m, prefix, keep_vars):
    return None


def sd_post(m, state_dict, prefix, local_metadata):
    return None


def lsd_pre(m, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    return None


def lsd_post(m, incompatible):
    return None


def g_fpre(m, args):
    return None


def g_fwd(m, args, out):
    return None


def g_fwd_kw(m, args, kwargs, out):
    return None


def g_bwd(m, grad_in, grad_out):
    return None


def g_bpre(m, grad_out):
    return None


def t_hook(grad):
    return None


def t_post(param):
    return None


def plant_every_kind(model: nn.Module, paths: list[str]) -> Counter:
    """Register one hook of every kind on each path (and globally); return what
    inventory must report, as a multiset of (path, kind, name, with_kwargs, always, origin)."""
    expected: Counter = Counter()
    mods = dict(model.named_modules())
    for path in paths:
        m = mods[path]
        m.register_forward_pre_hook(fpre)
        m.register_forward_pre_hook(fpre_kw, with_kwargs=True, prepend=True)
        m.register_forward_hook(fwd)
        m.register_forward_hook(fwd_kw, with_kwargs=True)
        m.register_forward_hook(fwd_always, always_call=True, prepend=True)
        m.register_full_backward_pre_hook(bpre)
        m.register_full_backward_hook(bwd)
        m.register_state_dict_pre_hook(sd_pre)
        m.register_state_dict_post_hook(sd_post)
        m.register_load_state_dict_pre_hook(lsd_pre)
        m.register_load_state_dict_post_hook(lsd_post)
        expected.update([
            (path, "forward_pre", "fpre", False, False, "user"),
            (path, "forward_pre", "fpre_kw", True, False, "user"),
            (path, "forward", "fwd", False, False, "user"),
            (path, "forward", "fwd_kw", True, False, "user"),
            (path, "forward", "fwd_always", False, True, "user"),
            (path, "backward_pre", "bpre", False, False, "user"),
            (path, "backward", "bwd", False, False, "user"),
            (path, "state_dict_pre", "sd_pre", False, False, "user"),
            (path, "state_dict", "sd_post", False, False, "user"),
            (path, "load_state_dict_pre", "lsd_pre", False, False, "user"),
            (path, "load_state_dict_post", "lsd_post", False, False, "user"),
        ])
        for pname, p in m.named_parameters(recurse=False):
            p.register_hook(t_hook)
            p.register_post_accumulate_grad_hook(t_post)
            full = f"{path}.{pname}" if path else pname
            expected.update([(full, "tensor", "t_hook", False, False, "user"),
                             (full, "tensor", "t_post", False, False, "user")])
            break
    module_mod.register_module_forward_pre_hook(g_fpre)
    module_mod.register_module_forward_hook(g_fwd, always_call=True)
    module_mod.register_module_forward_hook(g_fwd_kw, with_kwargs=True)
    module_mod.register_module_full_backward_hook(g_bwd)
    module_mod.register_module_full_backward_pre_hook(g_bpre)
    expected.update([
        ("<global>", "global_forward_pre", "g_fpre", False, False, "user"),
        ("<global>", "global_forward", "g_fwd", False, True, "user"),
        ("<global>", "global_forward", "g_fwd_kw", True, False, "user"),
        ("<global>", "global_backward", "g_bwd", False, False, "user"),
        ("<global>", "global_backward_pre", "g_bpre", False, False, "user"),
    ])
    return expected


MODELS = {
    "resnet18": ["", "conv1", "layer2.0.conv1", "layer3.1", "fc"],
    "vgg16": ["", "features.0", "features.14", "classifier.3"],
    "mobilenet_v3_small": ["", "features.0.0", "features.4.block.1", "classifier.3"],
}


def as_multiset(inv) -> Counter:
    return Counter((h.path, h.kind, h.name, h.with_kwargs, h.always_call, h.origin) for h in inv)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_kind_listed_exactly_once_then_strip_and_stripped(name):
    model = build(name)
    expected = plant_every_kind(model, MODELS[name])
    scale_handle = hw.attach(model, hw.hooks.Scale(0.5), where=[MODELS[name][1]])
    expected[(MODELS[name][1], "forward", "Scale", False, False, "hookwrap")] += 1

    inv = hw.inventory(model)
    assert as_multiset(inv) == expected
    assert {h.kind for h in inv} == set(KINDS) - {"parametrization"}  # parametrizations: their own test
    # PyTorch's call order: prepend=True hooks come first on their module.
    first_conv = [h.name for h in inv if h.path == MODELS[name][1] and h.kind == "forward"]
    assert first_conv == ["fwd_always", "fwd", "fwd_kw", "Scale"]
    assert len({(h.path, h.kind, h.hook_id) for h in inv}) == len(inv)

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        table = hook_table(model)
        with hw.stripped(model):
            assert len(hw.inventory(model)) == 0
            inside = model(x)
        after = model(x)
    assert not torch.equal(inside, before)  # the Scale hook really was off inside the block
    assert torch.equal(after, before)
    assert hook_table(model) == table       # same hooks, same ids, same order

    scale_handle.remove()  # the handle still works after stripped() restored its hook
    assert not hw.inventory(model).where(origin="hookwrap")

    plain = hw.strip(model, inplace=True)
    assert plain is model
    assert len(hw.inventory(model)) == 0


def test_origins_of_pytorch_utilities_and_hookwrap():
    model = build("resnet18")
    prune.l1_unstructured(model.conv1, "weight", amount=0.3)
    model.fc = weight_norm(model.fc)
    handle = hw.attach(model, hw.hooks.Dropout2d(0.1), where=["layer1.0.conv1"])
    inv = hw.inventory(model)
    assert {(h.path, h.origin, h.plan) for h in inv} == {
        ("conv1", "prune", "bake"), ("fc", "weight_norm", "bake"), ("layer1.0.conv1", "hookwrap", "convert"),
    }
    handle.remove()

    head = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    spectral_norm(head[0])
    inv = hw.inventory(head)
    assert {(h.kind, h.origin) for h in inv} == {
        ("forward_pre", "spectral_norm"), ("state_dict", "spectral_norm"), ("load_state_dict_pre", "spectral_norm"),
    }

    quant = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    quant.qconfig = tq.get_default_qconfig("x86")
    quant = tq.prepare(quant)
    inv = hw.inventory(quant)
    assert [(h.path, h.kind, h.origin, h.plan) for h in inv] == [("0", "forward", "quantization", "strip")]


def test_seed_hook_is_listed_with_its_name_and_plan():
    model = build("vgg16")
    seed = DropoutHook(prob=0.2)
    model.apply(seed.register_hook)
    inv = hw.inventory(model)
    convs = [p for p, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert [h.path for h in inv] == convs and len(convs) == 13
    assert {(h.kind, h.name, h.origin, h.plan, h.picklable) for h in inv} == {
        ("forward", "DropoutHook.dropout_hook", "user", "capture", True)  # decided by running example inputs
    }


def test_picklable_flag_and_plans():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[0].register_forward_hook(lambda m, i, o: o * 2)
    model[1].register_forward_hook(fwd)
    model[1].register_full_backward_hook(bwd)
    model[1].register_state_dict_post_hook(sd_post)
    inv = hw.inventory(model)
    assert [(h.path, h.picklable, h.plan) for h in inv] == [
        ("0", False, "capture"), ("1", True, "capture"), ("1", True, "strip"), ("1", True, "keep"),
    ]


def test_table_and_json():
    model = build("resnet18")
    model.layer1.register_forward_hook(fwd_always, always_call=True)
    model.register_forward_pre_hook(fpre_kw, with_kwargs=True)
    inv = hw.inventory(model)
    text = str(inv)
    lines = text.splitlines()
    assert lines[0] == "2 hook(s) on ResNet"
    assert lines[1].split()[:7] == ["path", "kind", "name", "origin", "flags", "pickle", "plan"]
    assert "<root>" in lines[3] and "kwargs" in lines[3] and "fpre_kw" in lines[3]
    assert "layer1" in lines[4] and "always" in lines[4]
    data = json.loads(inv.to_json())
    assert data["count"] == 2
    assert data["hooks"][0] == {
        "path": "", "kind": "forward_pre", "name": "fpre_kw", "hook_id": inv[0].hook_id,
        "with_kwargs": True, "always_call": False, "origin": "user", "picklable": True,
        "plan": "capture", "reason": inv[0].reason,
    }
    assert data["by_kind"] == {"forward_pre": 1, "forward": 1}


def test_shared_module_listed_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    shared.register_forward_hook(fwd)
    assert [h.path for h in hw.inventory(model)] == ["0"]


def test_inventory_does_not_change_the_model():
    model = build("mobilenet_v3_small")
    model.features[0].register_forward_hook(lambda m, i, o: o + 1)
    table = hook_table(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hw.inventory(model)
    assert hook_table(model) == table
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_inventory_with_example_inputs_says_what_convert_will_do():
    """One classification: with example inputs, the inventory's plan and reason are the
    decisions convert then carries out (and the model is left as it was)."""
    from helpers import DropoutHook, small_cnn

    from hookwrap.registry import CAPTURE_REASON

    model = small_cnn()
    seed = DropoutHook(0.2)
    model.apply(seed.register_hook)  # the seed article: F.dropout2d(out, p, True, False) on the convs
    model[5].register_forward_hook(lambda m, a, o: None)  # an observer
    x = torch.randn(2, 3, 10, 10)
    assert {h.reason for h in hw.inventory(model).where(kind="forward")} == {CAPTURE_REASON}
    table = hook_table(model)
    planned = hw.inventory(model, (x,))
    assert hook_table(model) == table
    assert [(h.path, str(h.plan), h.reason) for h in planned.where(kind="forward")] == [
        ("0", "convert", "recognised as Dropout2d(p=0.2, always=True)"),
        ("2", "convert", "recognised as Dropout2d(p=0.2, always=True)"),
        ("5", "strip", "observer: returned None and changed no tensor"),
    ]
    report = hw.conversion_report(hw.convert(model, (x,)))
    assert [(a.path, a.action, a.detail) for a in report] == [
        (h.path, h.plan.done, h.reason) for h in planned]
