"""hw.strip (with baking) and its transactional behaviour; the seed's torch.save complaint."""

from __future__ import annotations

import io
import re

import pytest
import torch
from helpers import build, hook_table, state_equal
from torch import nn
from torch.nn.utils import prune, spectral_norm, weight_norm

import hookwrap as hw


def resnet18_two_heads(seed: int = 0) -> nn.Module:
    """resnet18 whose head has two Linear layers, so that weight_norm and spectral_norm
    each get one."""
    model = build("resnet18", seed=seed)
    torch.manual_seed(seed + 1)
    model.fc = nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 10))
    return model.eval()


def transformed_resnet18() -> nn.Module:
    model = resnet18_two_heads()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            prune.l1_unstructured(m, "weight", amount=0.3)
    weight_norm(model.fc[0])
    spectral_norm(model.fc[2])
    return model.eval()


TRANSFORM_KEYS = re.compile(r".*(_orig|_mask|_g|_v|_u)$")


def test_bake_prune_weight_norm_spectral_norm():
    model = transformed_resnet18()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    assert any(TRANSFORM_KEYS.match(k) for k in model.state_dict())

    baked = hw.strip(model, bake=True)
    keys = list(baked.state_dict())
    assert not [k for k in keys if TRANSFORM_KEYS.match(k)]
    assert len(hw.inventory(baked)) == 0
    with torch.no_grad():
        got = baked(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)

    fresh = resnet18_two_heads(seed=5)
    fresh.load_state_dict(baked.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected, atol=1e-6, rtol=0)
    # 30% of every conv weight is exactly zero now.
    conv = baked.layer2[0].conv1.weight
    assert abs((conv == 0).float().mean().item() - 0.3) < 0.01

    report = hw.conversion_report(baked)
    assert len(report.of("baked")) == 20 + 2  # 20 convs, weight_norm, spectral_norm
    # the original keeps its hooks and reparametrization
    assert any(TRANSFORM_KEYS.match(k) for k in model.state_dict())


def test_strip_without_bake_keeps_masks():
    model = transformed_resnet18()
    out = hw.strip(model, bake=False)
    assert len(hw.inventory(out)) == 0
    assert "conv1.weight_orig" in out.state_dict()


class FailingPrune(prune.L1Unstructured):
    """A real pruning method whose removal fails, to break strip halfway."""

    def remove(self, module):
        raise RuntimeError("injected failure while baking")


def test_failure_halfway_leaves_model_identical():
    model = transformed_resnet18()
    FailingPrune.apply(model.layer3[0].bn1, "weight", amount=0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    table = hook_table(model)
    bake_order = [h.path for h in hw.inventory(model) if h.plan == "bake"]
    assert bake_order.index("layer3.0.bn1") > len(bake_order) // 3  # it fails halfway through
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)

    with pytest.raises(hw.HookwrapError, match=r"layer3\.0\.bn1.*injected failure"):
        hw.strip(model, inplace=True, bake=True)

    assert hook_table(model) == table
    assert state_equal(model.state_dict(), state)
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_lambda_hooks_fail_torch_save_and_save_after_strip():
    model = build("mobilenet_v3_small")
    model.features[1].register_forward_hook(lambda m, i, o: o * 0.5)
    scale = 2.0

    def closure(m, args):
        return (args[0] * scale,)

    model.classifier[0].register_forward_pre_hook(closure)
    with pytest.raises((AttributeError, TypeError, Exception), match="(?i)pickle"):
        torch.save(model, io.BytesIO())
    plain = hw.strip(model)
    buf = io.BytesIO()
    torch.save(plain, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert state_equal(loaded.state_dict(), plain.state_dict())


def test_where_and_kinds_select_what_is_stripped():
    model = build("resnet18")
    model.conv1.register_forward_hook(lambda m, i, o: o)
    model.fc.register_forward_hook(lambda m, i, o: o)
    model.fc.register_full_backward_hook(lambda m, gi, go: None)
    out = hw.strip(model, where=nn.Linear, kinds=["forward"])
    assert [(h.path, h.kind) for h in hw.inventory(out)] == [("conv1", "forward"), ("fc", "backward")]
    with pytest.raises(hw.InvalidArgumentError, match="unknown hook kind"):
        hw.strip(model, kinds=["forwards"])


def test_strip_keeps_the_models_own_output_capturing_hooks():
    """transformers collects hidden states with forward hooks it installs once per model:
    stripping them would make output_hidden_states return nothing, silently."""
    from libmodels import hf_model, token_ids

    model = hf_model("dinov2")
    inputs = token_ids("dinov2")
    with torch.no_grad():
        expected = model(*inputs, output_hidden_states=True).hidden_states
    model.encoder.layer[0].register_forward_hook(lambda m, a, o: None)
    plain = hw.strip(model)
    actions = {a.origin: a.action for a in hw.conversion_report(plain)}
    assert actions == {"transformers": "kept", "user": "stripped"}
    with hw.stripped(model), torch.no_grad():
        during = model(*inputs, output_hidden_states=True).hidden_states
    with torch.no_grad():
        after = plain(*inputs, output_hidden_states=True).hidden_states
    assert len(expected) == 4
    for states in (during, after):
        assert len(states) == len(expected) and all(torch.equal(a, b) for a, b in zip(states, expected))
