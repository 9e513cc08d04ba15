"""hw.hooks objects and hw.attach."""

from __future__ import annotations

import gc

import pytest
import torch
from helpers import build
from torch import nn

import hookwrap as hw
from hookwrap import wrappers as W


def test_attach_dropout2d_to_all_13_convs_of_vgg16_and_remove():
    model = build("vgg16")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        clean = model(x)
        handle = hw.attach(model, hw.hooks.Dropout2d(0.2, always=True), where=nn.Conv2d)
        convs = [p for p, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        assert len(handle) == 13 and list(handle.paths) == convs
        assert [h.path for h in hw.inventory(model)] == convs
        a, b = model(x), model(x)
        assert not torch.equal(a, b)  # drops in eval mode: always=True
        handle.remove()
        handle.remove()  # idempotent
        assert len(hw.inventory(model)) == 0
        assert torch.equal(model(x), clean)


def test_where_forms_and_position():
    model = build("resnet18")
    h1 = hw.attach(model, hw.hooks.Scale(2.0), where=(nn.Linear, nn.AdaptiveAvgPool2d))
    assert h1.paths == ("avgpool", "fc")
    h2 = hw.attach(model, hw.hooks.Clamp(min=0.0), where=lambda path, m: path.startswith("layer4") and isinstance(m, nn.BatchNorm2d))
    assert h2.paths == ("layer4.0.bn1", "layer4.0.bn2", "layer4.0.downsample.1", "layer4.1.bn1", "layer4.1.bn2")
    h3 = hw.attach(model, hw.hooks.Shift(1.0), where=["", "layer1"], position="pre")
    assert [(h.path, h.kind) for h in hw.inventory(model).where(kind="forward_pre")] == [("", "forward_pre"), ("layer1", "forward_pre")]
    with h3:
        pass
    assert not hw.inventory(model).where(kind="forward_pre")
    for h in (h1, h2):
        h.remove()
    assert len(hw.inventory(model)) == 0


def test_handle_holds_a_weak_reference():
    model = nn.Sequential(nn.Linear(2, 2))
    handle = hw.attach(model, hw.hooks.Scale(2.0), where=nn.Linear)
    assert handle.model is model
    del model
    gc.collect()
    assert handle.model is None
    handle.remove()  # still safe


@pytest.mark.parametrize("hook, wrapper", [
    (hw.hooks.Dropout(0.3, always=True), W.Dropout(0.3, always=True)),
    (hw.hooks.Dropout2d(0.2, always=True), W.Dropout2d(0.2, always=True)),
    (hw.hooks.Dropout3d(0.2, always=True), W.Dropout3d(0.2, always=True)),
    (hw.hooks.AlphaDropout(0.2, always=True), W.AlphaDropout(0.2, always=True)),
    (hw.hooks.GaussianNoise(0.1, always=True), W.GaussianNoise(0.1, always=True)),
    (hw.hooks.Scale(3.0), W.Scale(3.0)),
    (hw.hooks.Scale(divisor=3.0), W.Scale(divisor=3.0)),
    (hw.hooks.Shift(-0.5), W.Shift(-0.5)),
    (hw.hooks.Clamp(-0.1, 0.2), W.Clamp(-0.1, 0.2)),
    (hw.hooks.Activation(nn.GELU(approximate="tanh")), W.Activation(nn.GELU(approximate="tanh"))),
])
def test_hook_equals_its_wrapper_module(hook, wrapper):
    conv = nn.Conv3d(2, 4, 1).eval() if "3d" in type(hook).__name__ else nn.Conv2d(2, 4, 1).eval()
    x = torch.randn(3, 2, 5, 5, 5) if "3d" in type(hook).__name__ else torch.randn(3, 2, 5, 5)
    conv.register_forward_hook(hook)
    module = hook.to_module()
    assert type(module) is type(wrapper) and module.config() == wrapper.config()
    module.eval()
    with torch.no_grad():
        torch.manual_seed(7)
        hooked = conv(x)
        torch.manual_seed(7)
        explicit = module(nn.Conv2d.forward(conv, x) if isinstance(conv, nn.Conv2d) else nn.Conv3d.forward(conv, x))
    assert torch.equal(hooked, explicit)


def test_dropout_follows_module_mode_unless_always():
    lin = nn.Linear(8, 8)
    hw.attach(lin, hw.hooks.Dropout(0.5), where=[""])
    x = torch.randn(4, 8)
    lin.eval()
    with torch.no_grad():
        assert torch.equal(lin(x), nn.Linear.forward(lin, x))
    lin.train()
    with torch.no_grad():
        assert (lin(x) == 0).any()


def test_pre_hook_and_tuple_outputs():
    lstm = nn.LSTM(4, 6, batch_first=True)
    hw.attach(lstm, hw.hooks.Scale(2.0), where=[""])
    x = torch.randn(2, 3, 4)
    with torch.no_grad():
        out, (h, c) = lstm(x)
        ref_out, (ref_h, ref_c) = nn.LSTM.forward(lstm, x)
    assert torch.equal(out, ref_out * 2.0) and torch.equal(h, ref_h) and torch.equal(c, ref_c)
    lin = nn.Linear(4, 4)
    hw.attach(lin, hw.hooks.Scale(0.5), where=[""], position="pre")
    with torch.no_grad():
        assert torch.equal(lin(x), nn.Linear.forward(lin, x * 0.5))


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.2", True, float("nan")])
def test_p_outside_unit_interval_is_refused(bad):
    with pytest.raises(hw.HookwrapError, match="probability p must be a number in \\[0, 1\\]"):
        hw.hooks.Dropout2d(bad)


def test_bad_arguments_name_the_problem():
    model = build("resnet18")
    with pytest.raises(hw.HookwrapError, match=r"where=Conv1d matched no module of ResNet; module types present: .*Conv2d"):
        hw.attach(model, hw.hooks.Scale(2.0), where=nn.Conv1d)
    with pytest.raises(hw.HookwrapError, match=r"does not have: \['layer9'\]"):
        hw.attach(model, hw.hooks.Scale(2.0), where=["layer9"])
    with pytest.raises(hw.HookwrapError, match="predicate selected no module"):
        hw.attach(model, hw.hooks.Scale(2.0), where=lambda p, m: False)
    for call in (lambda: hw.attach("resnet", hw.hooks.Scale(2.0), where=nn.Conv2d),
                 lambda: hw.inventory(lambda x: x), lambda: hw.strip(42)):
        with pytest.raises(hw.HookwrapError, match="nn.Module, got"):
            call()
    with pytest.raises(hw.HookwrapError, match="position must be 'pre' or 'post'"):
        hw.attach(model, hw.hooks.Scale(2.0), where=nn.Linear, position="after")
    with pytest.raises(hw.HookwrapError, match="Activation takes one of torch.nn's parameter-free activations"):
        hw.hooks.Activation(nn.PReLU())
    with pytest.raises(hw.HookwrapError, match="exactly one of factor= or divisor="):
        hw.hooks.Scale()
    with pytest.raises(hw.HookwrapError, match="Clamp min .* is greater than max"):
        hw.hooks.Clamp(1.0, -1.0)
    assert len(hw.inventory(model)) == 0  # nothing was registered by the failed calls
    assert issubclass(hw.InvalidArgumentError, ValueError)
