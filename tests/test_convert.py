"""hw.convert: the seed verbatim, lambdas and closures, hook order, real models."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT, DropoutHook, build, hook_table, state_equal
from torch import nn
from torch.nn.modules import module as module_mod
from torch.nn.utils import prune

import hookwrap as hw
from hookwrap import wrappers as W


def forward_hooks(model):
    return [h for h in hw.inventory(model) if h.is_forward]


def test_seed_verbatim_vgg16():
    model = build("vgg16")
    dropout_ = DropoutHook(prob=0.2)
    model.apply(dropout_.register_hook)
    x = torch.randn(1, 3, 64, 64)
    converted = hw.convert(model, (x,))

    convs = [(p, m) for p, m in converted.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    for path, conv in convs:
        pre, post = W.host_wrappers(conv)
        assert pre == [] and len(post) == 1, path
        drop = post[0]
        assert type(drop) is W.Dropout2d and isinstance(drop, nn.Dropout2d)
        assert drop.p == 0.2 and drop.always is True
        drop.eval()
        assert (drop(torch.ones(2, 64, 4, 4)) == 0).any(), "drops in eval mode"
    assert list(converted.state_dict()) == list(build("vgg16").state_dict())
    assert state_equal(converted.state_dict(), model.state_dict())
    assert not forward_hooks(converted)
    with torch.no_grad():
        for seed in range(5):
            torch.manual_seed(seed)
            hooked = model(x)
            torch.manual_seed(seed)
            explicit = converted(x)
            assert torch.equal(hooked, explicit), seed
    report = hw.conversion_report(converted)
    assert len(report.of("converted")) == 13
    assert {a.wrapper for a in report} == {"Dropout2d"}
    # the original still carries its 13 hooks and no wrappers
    assert len(hw.inventory(model)) == 13 and not any(W.is_host(m) for m in model.modules())


FRESH_LOAD = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {root!r})
    model = torch.load({path!r}, weights_only=False)
    x = torch.load({xpath!r})
    with torch.no_grad():
        torch.save(model(x), {out!r})
    import hookwrap as hw
    print(len([h for h in hw.inventory(model) if h.is_forward]))
""")


def test_closure_and_lambda_convert_and_load_in_fresh_process(tmp_path):
    model = build("resnet18")
    scale = 0.7
    lo, hi = -0.5, 0.5

    def closure(module, args, out):
        return torch.clamp(out * scale, lo, hi)

    shift = torch.randn(1000) * 0.01
    model.conv1.register_forward_hook(closure)
    model.fc.register_forward_hook(lambda m, a, o: o * torch.sigmoid(o) + shift)
    x = torch.randn(2, 3, 64, 64)
    converted = hw.convert(model, (x,))
    post = W.host_wrappers(converted.conv1)[1]
    assert type(post[0]) is W.Chain and [type(i) for i in post[0].items] == [W.Scale, W.Clamp]
    assert type(W.host_wrappers(converted.fc)[1][0]) is W.CapturedHook
    assert "fc.hookwrap_post.0.c0" in converted.state_dict()
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(converted(x), expected)

    path, xpath, out = tmp_path / "m.pt", tmp_path / "x.pt", tmp_path / "y.pt"
    torch.save(converted, path)
    torch.save(x, xpath)
    code = FRESH_LOAD.format(root=str(ROOT), path=str(path), xpath=str(xpath), out=str(out))
    # The fresh process never defines `closure` or the lambda.
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0"
    assert torch.equal(torch.load(out), expected)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x, bias=None, scale: float = 1.0):
        h = self.proj(x) * scale
        if bias is not None:
            h = h + bias
        return self.out(torch.relu(h))


def test_pre_hooks_with_kwargs_and_root_hooks():
    torch.manual_seed(0)
    model = TwoInputs().eval()
    model.register_forward_pre_hook(lambda m, a, k: ((a[0] * 2,), {**k, "scale": 0.5}), with_kwargs=True)
    model.register_forward_pre_hook(lambda m, a: (a[0] - 1,), prepend=True)
    model.proj.register_forward_pre_hook(lambda m, a: (torch.tanh(a[0]),))
    model.register_forward_hook(lambda m, a, k, o: o + k["bias"].sum(), with_kwargs=True)
    model.register_forward_hook(lambda m, a, o: F.softmax(o, dim=-1))
    x, bias = torch.randn(4, 6), torch.randn(6)
    with torch.no_grad():
        expected = model(x, bias=bias)
    # example_inputs are positional, so the keyword argument comes from a caller module
    converted = hw.convert(_Call(model, bias), (x,))
    with torch.no_grad():
        assert torch.equal(converted(x), expected)
        x5 = torch.randn(5, 6)
        assert torch.equal(converted(x5), _Call(model, bias)(x5))
    pre, post = W.host_wrappers(converted.model)
    assert [type(w).__name__ for w in pre] == ["Shift", "CapturedHook"]
    assert [type(w).__name__ for w in post] == ["CapturedHook", "Activation"]
    assert not forward_hooks(converted)


class _Call(nn.Module):
    """Calls the wrapped model with a keyword argument, as user code would."""

    def __init__(self, model: nn.Module, bias: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("bias", bias)

    def forward(self, x):
        return self.model(x, bias=self.bias)


def test_hook_order_prepend_global_always_call_and_reuse():
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin).eval()  # lin is called twice
    lin.register_forward_hook(lambda m, a, o: o + 1.0)
    lin.register_forward_hook(lambda m, a, o: o * 3.0, prepend=True)
    lin.register_forward_hook(lambda m, a, o: torch.clamp(o, max=2.0), always_call=True)
    lin.register_forward_pre_hook(lambda m, a: (a[0] / 2.0,))
    module_mod.register_module_forward_hook(lambda m, a, o: o - 0.25 if isinstance(m, nn.Linear) else None)
    module_mod.register_module_forward_pre_hook(lambda m, a: (a[0] * -1.0,) if isinstance(m, nn.Linear) else None)
    x = torch.randn(3, 4)
    with torch.no_grad():
        expected = model(x)
    with pytest.raises(hw.UnconvertibleHookError, match="global_hooks='convert'"):
        hw.convert(model, (x,))  # kept global hooks would now run outside the module's converted hooks
    assert len(module_mod._global_forward_hooks) == 1 and len(module_mod._global_forward_pre_hooks) == 1
    converted = hw.convert(model, (x,), global_hooks="convert")
    assert not module_mod._global_forward_hooks and not module_mod._global_forward_pre_hooks
    pre, post = W.host_wrappers(converted[0])
    assert [w.config() for w in pre] == [{"factor": -1.0}, {"divisor": 2.0}]
    assert [w.config() for w in post] == [{"offset": -0.25}, {"factor": 3.0}, {"offset": 1.0}, {"min": None, "max": 2.0}]
    assert converted[0] is converted[2]
    with torch.no_grad():
        assert torch.equal(converted(x), expected)
    assert len(converted) == 3 and [type(m).__name__ for m in converted] == ["HookwrappedLinear", "ReLU", "HookwrappedLinear"]


class Seq2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h, _ = self.lstm(x)
        h, _ = self.mha(h, h, h)
        return self.head(h)


def test_multi_output_modules():
    torch.manual_seed(0)
    model = Seq2().eval()
    model.lstm.register_forward_hook(lambda m, a, o: (o[0] * 2.0, o[1]))
    model.lstm.register_forward_hook(lambda m, a, o: (o[0], (o[1][0] + 1.0, o[1][1])))
    model.mha.register_forward_hook(lambda m, a, o: (o[0] + o[0].mean(dim=1, keepdim=True), o[1]))
    model.mha.register_forward_hook(hw.hooks.Dropout(0.1, always=True))
    x = torch.randn(2, 5, 8)
    converted = hw.convert(model, (x,))
    assert [type(w).__name__ for w in W.host_wrappers(converted.lstm)[1]] == ["Scale", "CapturedHook"]
    with torch.no_grad():
        for batch in (2, 4):
            xb = torch.randn(batch, 5, 8)
            torch.manual_seed(1)
            expected = model(xb)
            torch.manual_seed(1)
            assert torch.equal(converted(xb), expected)


def test_observers_are_stripped_and_reported():
    model = build("resnet18")
    acts: list = []
    model.layer1.register_forward_hook(lambda m, a, o: acts.append(o.detach()))
    model.layer2.register_forward_hook(lambda m, a, o: None)
    converted = hw.convert(model, (torch.randn(1, 3, 32, 32),))
    report = hw.conversion_report(converted)
    stripped = {a.path: a.detail for a in report.of("stripped")}
    assert set(stripped) == {"layer1", "layer2"}
    assert stripped["layer1"].startswith("observer") and "Python state" in stripped["layer1"]
    assert not forward_hooks(converted) and not W.is_host(converted.layer1)


def test_unconvertible_hooks_are_listed_together_and_model_unchanged():
    model = build("mobilenet_v3_small")
    calls: list = []

    def branchy(m, a, o):
        if o.sum() > 0:
            return o * 2
        return o

    def noisy(m, a, o):
        calls.append(1)
        return o + 1

    model.features[1].register_forward_hook(branchy)
    model.features[2].register_forward_hook(noisy)
    model.features[3].register_forward_hook(hw.hooks.Scale(2.0))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    table = hook_table(model)
    with pytest.raises(hw.UnconvertibleHookError) as info:
        hw.convert(model, (torch.randn(1, 3, 64, 64),), inplace=True)
    err = info.value
    assert [(b.path, b.kind, b.name) for b in err.blockers] == [
        ("features.1", "forward", "test_unconvertible_hooks_are_listed_together_and_model_unchanged.<locals>.branchy"),
        ("features.2", "forward", "test_unconvertible_hooks_are_listed_together_and_model_unchanged.<locals>.noisy"),
    ]
    assert "data-dependent Python control flow" in err.blockers[0].reason
    assert "Python state" in err.blockers[1].reason
    assert all(b.fix for b in err.blockers)
    assert "features.1 [forward]" in str(err) and "features.2 [forward]" in str(err)
    assert hook_table(model) == table
    assert state_equal(model.state_dict(), state)
    assert not any(W.is_host(m) for m in model.modules())


def test_convert_returns_an_independent_model_and_inplace_converts_the_model_itself():
    """Issue 16: sharing tensors inside export_onnx, check_parity and bisect never reaches
    the public convert. An optimizer step on either side leaves the other one as it was;
    inplace=True converts the caller's model itself."""
    model = build("resnet18")
    prune.l1_unstructured(model.conv1, "weight", amount=0.3)  # baked: a tensor convert changes
    model.fc.register_forward_hook(lambda m, a, o: o * 2.0)  # captured
    x = torch.randn(2, 3, 64, 64)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    converted = hw.convert(model, (x,))
    assert not forward_hooks(converted)
    ours = {id(t) for t in [*model.parameters(), *model.buffers()]}
    assert not any(id(t) in ours for t in [*converted.parameters(), *converted.buffers()])
    theirs = model.state_dict()
    shared_storage = [k for k, v in converted.state_dict().items() if k in theirs
                      and v.untyped_storage().data_ptr() == theirs[k].untyped_storage().data_ptr()]
    assert shared_storage == []

    def step(net: nn.Module) -> None:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
        net.train()(x).square().mean().backward()  # train mode: batch norm's running stats move too
        optimizer.step()
        net.eval()

    step(converted)
    moved = [k for k, v in converted.state_dict().items() if k in original and not torch.equal(v, original[k])]
    assert {"fc.weight", "layer4.1.conv2.weight", "bn1.running_mean"} <= set(moved)
    assert state_equal(model.state_dict(), original)
    mine = {k: v.clone() for k, v in converted.state_dict().items()}
    step(model)
    assert not state_equal(model.state_dict(), original)
    assert state_equal(converted.state_dict(), mine)

    assert hw.convert(model, (x,), inplace=True) is model
    assert not forward_hooks(model)


def test_convert_without_example_inputs():
    model = build("resnet18")
    hw.attach(model, hw.hooks.Scale(0.5), where=nn.BatchNorm2d)
    converted = hw.convert(model)
    assert len(hw.conversion_report(converted).of("converted")) == 20
    model.fc.register_forward_hook(lambda m, a, o: o * 2)
    with pytest.raises(hw.UnconvertibleHookError, match="needs example inputs"):
        hw.convert(model)
    with pytest.raises(hw.InvalidArgumentError, match="tuple of positional inputs"):
        hw.convert(model, torch.randn(1, 3, 32, 32))


def test_bakes_pytorch_utilities_and_strips_gradient_hooks():
    model = build("resnet18")
    prune.l1_unstructured(model.conv1, "weight", amount=0.5)
    model.fc.register_full_backward_hook(lambda m, gi, go: None)
    model.fc.weight.register_hook(lambda g: g)
    model.fc.register_state_dict_post_hook(lambda m, sd, p, lm: None)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    converted = hw.convert(model, (x,))
    assert "conv1.weight_orig" not in converted.state_dict()
    assert [(h.kind, h.plan) for h in hw.inventory(converted)] == [("state_dict", "keep")]
    assert {a.action for a in hw.conversion_report(converted)} == {"baked", "stripped", "kept"}
    with torch.no_grad():
        torch.testing.assert_close(converted(x), expected, atol=1e-6, rtol=0)


class Temperature:
    """A user hook type with a converter."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self, module, args, out):
        return out / self.t


def test_register_converter_is_tried_before_capture():
    model = build("resnet18")
    model.fc.register_forward_hook(Temperature(2.0))
    with hw.register_converter(Temperature, lambda hook, module: W.Scale(divisor=hook.t), wrapper=W.Scale):
        converted = hw.convert(model)  # no example inputs needed
    assert W.host_wrappers(converted.fc)[1][0].config() == {"divisor": 2.0}
    action = hw.conversion_report(converted)[0]
    assert action.detail.startswith("registered converter for Temperature")


def _mix_hooks(model: nn.Module, paths: list[str]) -> None:
    """At least 10 hooks of several kinds, deterministic and stochastic."""
    mods = dict(model.named_modules())
    factor = torch.tensor(0.9)
    kinds = [
        lambda m: m.register_forward_hook(hw.hooks.Scale(1.1)),
        lambda m: m.register_forward_hook(lambda mod, a, o: torch.clamp(o, -3.0, 3.0)),
        lambda m: m.register_forward_hook(lambda mod, a, o: o * factor + 0.01),
        lambda m: m.register_forward_pre_hook(lambda mod, a: (a[0] * 0.95, *a[1:])),
        lambda m: m.register_forward_hook(hw.hooks.Dropout(0.1, always=True)),
        lambda m: m.register_forward_hook(lambda mod, a, o: F.gelu(o)),
        lambda m: m.register_forward_hook(lambda mod, a, o: None),
    ]
    for i, path in enumerate(paths):
        kinds[i % len(kinds)](mods[path])


REAL = {
    "resnet18": (["conv1", "bn1", "layer1.0.conv1", "layer1.1", "layer2.0.conv2", "layer2.1.bn2", "layer3",
                  "layer3.0.downsample.0", "layer4.1.conv1", "avgpool", "fc"], 64),
    "mobilenet_v3_small": (["features.0", "features.1.block.0", "features.2", "features.3.block.1",
                            "features.4.block.2.fc1", "features.6", "features.9", "features.11", "features.12",
                            "classifier.0", "classifier.3"], 64),
    "vit_b_16": (["conv_proj", "encoder.dropout", "encoder.layers.encoder_layer_0.ln_1",
                  "encoder.layers.encoder_layer_1.mlp", "encoder.layers.encoder_layer_2.mlp.0",
                  "encoder.layers.encoder_layer_3", "encoder.layers.encoder_layer_5.ln_2",
                  "encoder.layers.encoder_layer_7.mlp.3", "encoder.layers.encoder_layer_9",
                  "encoder.ln", "heads.head"], 224),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_models_batch_1_and_3(name):
    paths, size = REAL[name]
    model = build(name)
    _mix_hooks(model, paths)
    converted = hw.convert(model, (torch.randn(1, 3, size, size),))
    assert not forward_hooks(converted)
    keys = list(converted.state_dict())
    own = [k for k in keys if ".hookwrap_post." in k or ".hookwrap_pre." in k]
    assert own, "the closure over a tensor keeps it as a wrapper constant"
    assert [k for k in keys if k not in own] == list(build(name).state_dict())
    with torch.no_grad():
        for batch in (1, 3):
            x = torch.randn(batch, 3, size, size)
            torch.manual_seed(batch)
            expected = model(x)
            torch.manual_seed(batch)
            got = converted(x)
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_root_hooks_convert_and_export_to_onnx(tmp_path):
    import numpy as np
    import onnxruntime as ort

    model = build("resnet18")
    model.register_forward_pre_hook(lambda m, a: (a[0] * 0.5,))
    offset = torch.linspace(-1, 1, 1000)
    model.register_forward_hook(lambda m, a, o: torch.log_softmax(o + offset, dim=1))
    x = torch.randn(1, 3, 64, 64)
    converted = hw.convert(model, (x,))
    assert type(converted).__name__ == "HookwrappedResNet"
    assert isinstance(converted, type(build("resnet18")))
    assert not forward_hooks(converted)
    model.eval()
    converted.eval()
    with torch.no_grad():
        for batch in (1, 3):
            xb = torch.randn(batch, 3, 64, 64)
            assert torch.equal(converted(xb), model(xb)), f"batch {batch}"
    path = tmp_path / "root.onnx"
    program = torch.onnx.export(converted, (x,), dynamo=True, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(x3).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x3.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


def test_global_hooks_belong_to_the_process_and_are_kept_unless_asked(tmp_path):
    """convert on a copy leaves global hooks registered and reports them; it turns them
    into wrappers (and removes them from the process) only with global_hooks='convert'."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval()
    handle = module_mod.register_module_forward_hook(lambda m, a, o: o * 2.0 if isinstance(m, nn.Linear) else None)
    x = torch.randn(3, 4)
    with torch.no_grad():
        expected = model(x)
    kept = hw.convert(model, (x,))
    assert len(module_mod._global_forward_hooks) == 1  # still registered: the process owns it
    action = next(a for a in hw.conversion_report(kept) if a.kind == "global_forward")
    assert action.action == "kept" and "belongs to the process" in action.detail
    assert not W.is_host(kept[0])
    with torch.no_grad():
        assert torch.equal(kept(x), expected)  # the live global hook still runs on it
    with pytest.raises(hw.HookwrapError, match="global"):
        hw.save(kept, tmp_path / "m.safetensors")  # the file could not carry the global hook
    converted = hw.convert(model, (x,), global_hooks="convert")
    assert not module_mod._global_forward_hooks
    assert [w.config() for w in W.host_wrappers(converted[0])[1]] == [{"factor": 2.0}]
    handle.remove()
    with torch.no_grad():
        assert torch.equal(converted(x), expected)


def test_a_size_the_captured_graph_fixes_blames_the_hook_and_the_dimension():
    """The hook branches on the sequence length, so export fixes it at the example's 8; the
    hooked model runs at 11, the converted one cannot. convert blames the hook and names
    the dimension, and never suggests that the (valid) inputs were wrong."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4)).eval()
    model[0].register_forward_hook(lambda m, a, o: o * 2 if o.shape[1] == 8 else o - 1)
    before = hook_table(model)
    with pytest.raises(hw.UnconvertibleHookError) as info:
        hw.convert(model, (torch.randn(2, 8, 4),))
    (blocker,) = info.value.blockers
    assert blocker.path == "0" and blocker.name.endswith("<lambda>")
    assert ("fails on a second input drawn like the example, with other sizes (input 0 [2, 8, 4] -> [2, 11, 4])"
            in blocker.reason)
    assert "size 11 in dim 1" in blocker.reason and "at capture, 8" in blocker.reason
    assert "where the hooked model runs" in blocker.reason and "example_inputs" not in str(info.value)
    assert hook_table(model) == before


class Options(nn.Module):
    """A model with a call option of its own: ``features=True`` also returns the hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x, features=False):
        h = self.a(x)
        y = self.b(h)
        return (y, h) if features else y


class Seen(nn.Module):
    """A Linear that notes every input it is called with (on the class: convert works on a copy)."""

    seen: list[torch.Tensor] = []

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        Seen.seen.append(x.clone())
        return self.lin(x)


def test_the_second_input_is_drawn_anew_at_other_sizes_and_at_the_example_sizes_only_when_those_are_refused():
    """The end-to-end check's second input carries new values and new sizes in one run; the
    same-size run is the fallback for a model that refuses every other size (next test)."""
    torch.manual_seed(0)
    model = Seen().eval()
    model.lin.register_forward_hook(lambda m, a, o: o * torch.linspace(1, 2, o.shape[-1]))
    x = torch.randn(2, 8, 4)
    Seen.seen = []
    converted = hw.convert(model, (x,))
    checks = {c.what: c.status for c in hw.conversion_report(converted).checks}
    resized = "a second input drawn like the example, with other sizes (input 0 [2, 8, 4] -> [2, {})"
    assert checks == {"the example inputs": "passed", resized.format("11, 4]"): "passed",
                      resized.format("8, 7]"): "skipped"}
    # every run at the example's sizes was the example itself; the longer input is new
    assert all(torch.equal(s, x) for s in Seen.seen if s.shape == x.shape)
    longer = [s for s in Seen.seen if s.shape == (2, 11, 4)]
    assert len(longer) == 2 and torch.equal(longer[0], longer[1]) and not torch.equal(longer[0][:, :8], x)


def test_call_options_are_checked_on_request_and_reported():
    torch.manual_seed(0)
    model = Options().eval()
    model.a.register_forward_hook(lambda m, a, o: o * torch.linspace(1, 2, o.shape[-1]))
    x = torch.randn(2, 4)
    converted = hw.convert(model, (x,), call_options=[{"features": True}])
    checks = {c.what: c.status for c in hw.conversion_report(converted).checks}
    assert checks == {"the example inputs": "passed", "a second input drawn like the example": "passed",
                      "a second input drawn like the example, with other sizes (input 0 [2, 4] -> [2, 7])": "skipped",
                      "the example inputs with features=True": "passed"}
    with torch.no_grad():
        got, expected = converted(x, features=True), model(x, features=True)
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    assert "passed: the example inputs with features=True" in str(hw.conversion_report(converted))
    # not a transformers model: no call options by default
    default = hw.conversion_report(hw.convert(model, (x,))).checks
    assert not [c for c in default if "features" in c.what]
    for bad in ({"features": True}, [("features", True)], "features"):
        with pytest.raises(hw.InvalidArgumentError, match="call_options"):
            hw.convert(model, (x,), call_options=bad)


def test_convert_leaves_torch_rng_as_it_found_it_and_queues_no_cuda_seed():
    """hookwrap's seeded runs draw what ``torch.manual_seed`` would on the CPU, restore the
    caller's generator afterwards, and do not queue a seed for a CUDA start (which
    ``torch.manual_seed`` does, formatting a stack trace each time; the CUDA wheel here
    has no GPU, so such a seed would change the seed a later CUDA start gets)."""
    from hookwrap._torch import reseed

    reseed(7)
    ours = torch.rand(5)
    torch.manual_seed(7)
    assert torch.equal(ours, torch.rand(5))

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    model[0].register_forward_hook(lambda m, a, o: F.dropout2d(o, 0.25, True, False))
    x = torch.randn(2, 3, 8, 8)
    queued = list(torch.cuda._lazy_seed_tracker.get_calls())
    state = torch.get_rng_state()
    converted = hw.convert(model, (x,))
    assert isinstance(converted[0].hookwrap_post[0], W.Dropout2d)
    assert torch.equal(torch.get_rng_state(), state)
    assert list(torch.cuda._lazy_seed_tracker.get_calls()) == queued
