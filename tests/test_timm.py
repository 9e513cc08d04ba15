"""timm models and timm's own hooks (built from configs, no downloads)."""

from __future__ import annotations

import pytest
import torch
from helpers import hook_table
from libmodels import scaled_atol, timm_model
from torch import nn

import hookwrap as hw


@pytest.fixture(scope="module")
def features():
    model = timm_model("resnet18", features_only=True, feature_cls="hook")
    return model, (torch.randn(1, 3, 64, 64),)


def test_timm_feature_hooks_are_not_stripped_as_observers(features):
    """timm's FeatureHooks return None and store the tapped outputs, which forward returns:
    stripping them emptied the model's output without a word. convert must refuse them."""
    model, example = features
    table = hook_table(model)
    with torch.no_grad():
        before = model(*example)
    assert len(before) == 5
    with pytest.raises(hw.UnconvertibleHookError) as info:
        hw.convert(model, example)
    err = info.value
    assert [b.path for b in err.blockers] == ["body.act1", "body.layer1", "body.layer2", "body.layer3", "body.layer4"]
    assert all(b.name == "FeatureHooks._collect_output_hook" for b in err.blockers)
    assert "reads back what it stores" in str(err) and "feature_cls='getter'" in str(err)
    assert hook_table(model) == table  # the model is left as it was
    with torch.no_grad():
        after = model(*example)
    assert len(after) == 5 and all(torch.equal(a, b) for a, b in zip(before, after))


def test_timm_feature_hook_model_exports_itself_and_passes_parity(features, tmp_path):
    model, example = features
    result = hw.export_onnx(model, example, tmp_path / "features.onnx")
    assert not result.converted and len(result.inline_hooks) == 5
    assert "exported the hooked model itself" in result.notes[0]
    assert len(result.output_names) == 5
    with torch.no_grad():
        smallest = min(float(f.abs().max()) for f in model(*example))
    report = hw.check_parity(model, result.path, example, atol=1e-4 * smallest)
    assert report and len(report.checks) == 4 * 5, report.summary()


@pytest.mark.parametrize("name", ["levit_128s", "efficientformerv2_s0"])
def test_models_that_cache_non_leaf_tensors_convert_and_export(name, tmp_path):
    """After an ordinary grad-enabled forward in eval mode, these models keep non-leaf
    tensors in their attention-bias caches, which copy.deepcopy refuses."""
    model = timm_model(name)
    hw.attach(model, hw.hooks.Scale(0.5), where=nn.Linear)
    x = torch.randn(2, 3, 224, 224)
    model(x)  # fills the caches with tensors that have a grad_fn
    caches = {p: dict(m.attention_bias_cache) for p, m in model.named_modules() if getattr(m, "attention_bias_cache", None)}
    assert caches and any(t.grad_fn is not None for c in caches.values() for t in c.values())
    converted = hw.convert(model, (x,))
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(converted(x), expected)
    result = hw.export_onnx(model, (x,), tmp_path / f"{name}.onnx")
    assert result.converted
    assert hw.check_parity(model, result.path, (x,), random_inputs=1, atol=scaled_atol(expected))
    for path, cache in caches.items():  # the caller's caches are the same objects as before
        live = model.get_submodule(path).attention_bias_cache
        assert all(live[k] is v for k, v in cache.items())
