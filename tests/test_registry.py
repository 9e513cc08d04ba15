"""The typed registry of hook sources (hookwrap/registry.py): its order, and the sources
issue 24 added, each with a real hook of its library: quantization observers and fake
quantization, new-style parametrizations, PEFT's input-grad hooks, and what the inventory
says without example inputs."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
import torch.ao.quantization as tq
from libmodels import hf_model, token_ids
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import hookwrap as hw
from hookwrap import registry
from hookwrap import wrappers as W


def test_the_rules_are_one_ordered_list_and_capture_comes_last():
    names = [type(s).__name__ for s in registry.SOURCES]
    assert names == ["GlobalHooks", "GradientHooks", "HookwrapHooks", "UserConverters", "Pruning", "WeightNormHook",
                     "SpectralNormHook", "Parametrizations", "Quantization", "TorchScriptModules", "TimmFeatureHooks",
                     "TransformersOutputCapture", "InputRequireGrads", "TransformerLensHookPoints",
                     "TransformerLensWiring", "StateDictHooks", "Capture"]
    assert all(s.label for s in registry.SOURCES)  # each says what it does, for the docs


def qat_model(*, fused: bool = True, seed: int = 0) -> nn.Module:
    """torch.ao eager-mode quantization-aware training, the way its docs show it (the default
    x86 qconfig, with fused fake quantization; or the plain FakeQuantize modules)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).train()
    model.qconfig = tq.get_default_qat_qconfig("x86") if fused else \
        tq.QConfig(activation=tq.default_fake_quant, weight=tq.default_weight_fake_quant)
    model = tq.prepare_qat(model)
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    for _ in range(3):  # a little training: the observers learn their ranges
        model(x)
    return model


def frozen(model: nn.Module) -> nn.Module:
    model.apply(tq.disable_observer)
    return model.eval()


def test_quantization_aware_training_converts_once_its_observers_are_frozen(tmp_path):
    model = qat_model().eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(hw.UnconvertibleHookError, match="disable_observer"):
        hw.convert(model, (x,))  # still observing: its scale changes on every call
    frozen(model)
    inv = hw.inventory(model).where(kind="forward")
    assert [(h.path, h.origin, str(h.plan)) for h in inv] == [("0", "quantization", "convert"),
                                                             ("3", "quantization", "convert")]
    converted = hw.convert(model, (x,))
    wrappers = [w for w in converted.modules() if isinstance(w, W.FakeQuantize)]
    assert len(wrappers) == 2 and not hw.inventory(converted).where(kind="forward")
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(converted(x), expected)
        assert not torch.equal(expected, hw.strip(model)(x))  # the fake quantization matters
    hw.save(converted, tmp_path / "qat.safetensors")
    loaded = hw.load(tmp_path / "qat.safetensors", base=lambda: hw.strip(frozen(qat_model(seed=3)), inplace=True))
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    with pytest.raises(hw.ManifestError, match="live forward hooks"):  # a base with its observers' hooks
        hw.load(tmp_path / "qat.safetensors", base=frozen(qat_model(seed=3)))


def test_frozen_fake_quantization_exports_to_quantize_linear_and_passes_parity(tmp_path):
    """The hooks become FakeQuantize wrappers, which both exporters write as
    QuantizeLinear/DequantizeLinear. The weights' fake quantization runs inside torch.ao's QAT
    modules: the dynamo exporter cannot trace their observer flag, and export_onnx's error
    says that the legacy exporter exports the model, which it checked."""
    model = frozen(qat_model(fused=False))
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(hw.ExportError, match="exporter='legacy' exports this model"):
        hw.export_onnx(model, (x,), tmp_path / "q.onnx")
    result = hw.export_onnx(model, (x,), tmp_path / "q.onnx", exporter="legacy")
    assert result.converted and result.node_counts.get("QuantizeLinear", 0) == 4  # 2 hooks, 2 weights
    assert result.node_counts.get("DequantizeLinear", 0) == 4
    report = hw.check_parity(model, result.path, (x,), atol=1e-3)
    assert report and report.checks[0].max_abs_diff == 0.0, report.summary()
    onnx.checker.check_model(str(result.path))


def test_post_training_observers_are_stripped_for_what_they_are():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    model.qconfig = tq.get_default_qconfig("x86")
    model = tq.prepare(model)
    (info,) = hw.inventory(model).where(kind="forward")
    assert info.plan == "strip" and "records statistics" in info.reason
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(hw.convert(model, (x,))(x), model(x))


def parametrized() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3)).eval()
    parametrizations.weight_norm(model[0])
    parametrizations.spectral_norm(model[2])
    parametrizations.orthogonal(model[3])
    return model


def test_new_style_parametrizations_are_listed_and_baked_by_convert_and_strip():
    model = parametrized()
    x = torch.randn(5, 4)
    with torch.no_grad():
        expected = model(x)
    listed = hw.inventory(model).where(kind="parametrization")
    assert [(h.path, h.origin, h.name, h.tensor, str(h.plan)) for h in listed] == [
        ("0", "weight_norm", "_WeightNorm", "weight", "bake"), ("2", "spectral_norm", "_SpectralNorm", "weight", "bake"),
        ("3", "orthogonal", "_Orthogonal", "weight", "bake")]
    keys = list(model.state_dict())
    for result in (hw.convert(model, (x,)), hw.strip(model)):
        assert not any(parametrize.is_parametrized(m) for m in result.modules())
        assert sorted(result.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight", "3.bias", "3.weight"]
        assert type(result[0]) is nn.Linear and not hw.inventory(result)
        with torch.no_grad():
            torch.testing.assert_close(result(x), expected, atol=1e-6, rtol=0)
    # the copies were baked, the model itself is as it was (a deep copy shares the
    # parametrized class, whose property baking removes: it used to break the original)
    assert list(model.state_dict()) == keys and all(parametrize.is_parametrized(model[i]) for i in (0, 2, 3))
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_input_grad_hooks_are_stripped_and_reported_for_what_they_do():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(hf_model("gpt2"), LoraConfig(r=4, target_modules=["c_attn"], lora_alpha=8))
    model.enable_input_require_grads()
    (info,) = hw.inventory(model).where(kind="forward")
    assert info.plan == "strip" and "requires_grad" in info.reason and "enable_input_require_grads()" in info.reason


def test_the_inventory_without_example_inputs_says_what_it_knows():
    """It said plan=convert for hooks that convert then stripped (transformers' capture hooks,
    the input-grad hook); a hook only capture can decide now says so."""
    dino = hf_model("dinov2")
    with torch.no_grad():
        dino(*token_ids("dinov2"), output_hidden_states=True)
    dino.embeddings.register_forward_hook(lambda m, a, o: o * 2)
    plans = {(h.origin, str(h.plan)) for h in hw.inventory(dino).where(kind="forward")}
    assert plans == {("transformers", "keep"), ("user", "capture")}
    llama = hf_model("llama")
    llama.enable_input_require_grads()
    assert [str(h.plan) for h in hw.inventory(llama).where(kind="forward")] == ["strip"]


def test_baking_in_place_is_undone_when_conversion_fails():
    """convert(inplace=True) bakes the parametrizations, then its end-to-end check finds two
    hooks that share state: the model is put back as it was, parametrizations included."""
    model = parametrized()
    seen = {}
    model[1].register_forward_hook(lambda m, a, o: seen.__setitem__("h", o))
    model[2].register_forward_pre_hook(lambda m, a: (a[0] + seen["h"],))
    x = torch.randn(5, 4)
    before = copy.deepcopy(model.state_dict())
    classes = [type(m) for m in model]
    with pytest.raises(hw.UnconvertibleHookError):
        hw.convert(model, (x,), inplace=True)
    assert [type(m) for m in model] == classes and all(parametrize.is_parametrized(model[i]) for i in (0, 2, 3))
    assert list(model.state_dict()) == list(before)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        model(x)  # it still runs


def test_export_bakes_parametrizations_on_its_copy_and_leaves_the_model_alone(tmp_path):
    """export_onnx's copy shared the model's tensors, and remove_parametrizations writes the
    baked weight into the original tensor with set_(): exporting changed the caller's
    orthogonal and spectral-norm weights (parity then failed against the changed model)."""
    model = parametrized()
    x = torch.randn(5, 4)
    state = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        expected = model(x)
    result = hw.export_onnx(model, (x,), tmp_path / "p.onnx")
    assert result.converted and "Householder" not in str(result.node_counts)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    assert hw.check_parity(model, result.path, (x,))
