"""Capture: recognised patterns, CapturedHook, observers and what cannot be captured."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hookwrap as hw
from hookwrap import wrappers as W
from hookwrap._graph import GraphFormatError, decode


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def only_wrapper(model, position="post", path="0"):
    pre, post = W.host_wrappers(dict(model.named_modules())[path])
    items = post if position == "post" else pre
    assert len(items) == 1
    return items[0]


def check_equal_in_both_modes(model, converted, x):
    for training in (False, True):
        model.train(training)
        converted.train(training)
        with torch.no_grad():
            for seed in (0, 1):
                torch.manual_seed(seed)
                expected = model(x)
                torch.manual_seed(seed)
                assert torch.equal(converted(x), expected), (training, seed)
    model.eval()


RECOGNISED = [
    (lambda m, a, o: F.dropout(o, 0.3, True), {"type": "Dropout", "config": {"p": 0.3, "always": True}}),
    (lambda m, a, o: F.dropout(o, 0.3, m.training), {"type": "Dropout", "config": {"p": 0.3, "always": False}}),
    (lambda m, a, o: F.dropout2d(o, 0.2, True, False), {"type": "Dropout2d", "config": {"p": 0.2, "always": True}}),
    (lambda m, a, o: F.alpha_dropout(o, 0.2, True), {"type": "AlphaDropout", "config": {"p": 0.2, "always": True}}),
    (lambda m, a, o: o + torch.randn_like(o) * 0.1, {"type": "GaussianNoise", "config": {"std": 0.1, "always": True}}),
    (lambda m, a, o: o + torch.randn_like(o) * 0.1 if m.training else o,
     {"type": "GaussianNoise", "config": {"std": 0.1, "always": False}}),
    (lambda m, a, o: F.relu(o), {"type": "Activation", "config": {"name": "ReLU", "kwargs": {}}}),
    (lambda m, a, o: o.sigmoid(), {"type": "Activation", "config": {"name": "Sigmoid", "kwargs": {}}}),
    (lambda m, a, o: F.gelu(o, approximate="tanh"),
     {"type": "Activation", "config": {"name": "GELU", "kwargs": {"approximate": "tanh"}}}),
    (lambda m, a, o: F.leaky_relu(o, 0.2),
     {"type": "Activation", "config": {"name": "LeakyReLU", "kwargs": {"negative_slope": 0.2}}}),
    (lambda m, a, o: F.softmax(o, dim=1), {"type": "Activation", "config": {"name": "Softmax", "kwargs": {"dim": 1}}}),
    (lambda m, a, o: o * 2.5, {"type": "Scale", "config": {"factor": 2.5}}),
    (lambda m, a, o: 3 * o, {"type": "Scale", "config": {"factor": 3}}),
    (lambda m, a, o: o / 4.0, {"type": "Scale", "config": {"divisor": 4.0}}),
    (lambda m, a, o: o - 1.0, {"type": "Shift", "config": {"offset": -1.0}}),
    (lambda m, a, o: 0.5 + o, {"type": "Shift", "config": {"offset": 0.5}}),
    (lambda m, a, o: torch.clamp(o, 0.0, 6.0), {"type": "Clamp", "config": {"min": 0.0, "max": 6.0}}),
    (lambda m, a, o: o.clamp(min=0), {"type": "Clamp", "config": {"min": 0, "max": None}}),
    (lambda m, a, o: o.clamp_max(1.0), {"type": "Clamp", "config": {"min": None, "max": 1.0}}),
    (lambda m, a, o: torch.relu(o * 2.0 + 1.0), {"type": "Chain", "config": {"items": [
        {"type": "Scale", "config": {"factor": 2.0}}, {"type": "Shift", "config": {"offset": 1.0}},
        {"type": "Activation", "config": {"name": "ReLU", "kwargs": {}}}]}}),
]


@pytest.mark.parametrize("hook, spec", RECOGNISED, ids=[s["type"] + str(i) for i, (_, s) in enumerate(RECOGNISED)])
def test_recognised_patterns_become_plain_modules(hook, spec):
    model = small()
    model[0].register_forward_hook(hook)
    x = torch.randn(2, 3, 8, 8)
    converted = hw.convert(model, (x,))
    assert only_wrapper(converted).spec() == spec
    check_equal_in_both_modes(model, converted, x)


@pytest.mark.parametrize("hook", [lambda m, a: (a[0] * 2.0,), lambda m, a: a[0] * 2.0])
def test_pre_hook_patterns(hook):
    model = small()
    model[2].register_forward_pre_hook(hook)
    x = torch.randn(2, 3, 8, 8)
    converted = hw.convert(model, (x,))
    assert only_wrapper(converted, "pre", "2").spec() == {"type": "Scale", "config": {"factor": 2.0}}
    check_equal_in_both_modes(model, converted, x)


def test_dropout_with_training_false_is_a_no_op_and_stripped():
    model = small()
    model[0].register_forward_hook(lambda m, a, o: F.dropout(o, 0.5, False))
    converted = hw.convert(model, (torch.randn(2, 3, 8, 8),))
    assert not W.is_host(converted[0])
    assert hw.conversion_report(converted)[0].detail.startswith("has no effect")


@pytest.mark.parametrize("hook", [
    lambda m, a, o: o * o.mean(),
    lambda m, a, o: 1.0 - o,
    lambda m, a, o: torch.cat([o, o], dim=1)[:, : o.shape[1]] * m.weight.sum(),
])
def test_other_bodies_become_captured_hooks(hook):
    model = small()
    model[0].register_forward_hook(hook)
    x = torch.randn(1, 3, 8, 8)
    converted = hw.convert(model, (x,))
    wrapper = only_wrapper(converted)
    assert type(wrapper) is W.CapturedHook
    for batch in (1, 4):
        xb = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            assert torch.equal(converted(xb), model(xb))


def test_captured_hook_reads_host_parameters_live():
    model = small()
    model[0].register_forward_hook(lambda m, a, o: o + m.bias.view(1, -1, 1, 1))
    x = torch.randn(2, 3, 8, 8)
    converted = hw.convert(model, (x,))
    wrapper = only_wrapper(converted)
    assert wrapper.host_tensors == ["bias"] and not list(wrapper.buffers())
    with torch.no_grad():
        converted[0].bias.add_(1.0)
        model[0].bias.add_(1.0)
        assert torch.equal(converted(x), model(x))


def test_in_place_output_mutation_converts():
    model = small()

    def scale_in_place(m, a, o):
        o.mul_(0.5)

    model[0].register_forward_hook(scale_in_place)
    x = torch.randn(2, 3, 8, 8)
    converted = hw.convert(model, (x,))
    assert type(only_wrapper(converted)) is W.CapturedHook
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))


class Counter:
    def __init__(self):
        self.count = 0

    def __call__(self, m, a, o):
        self.count += 1
        return o * 2


def test_what_cannot_be_captured():
    model = small()

    def mutates_input(m, a, o):
        a[0].add_(1.0)
        return o

    model[0].register_forward_hook(Counter())
    model[0].register_forward_hook(mutates_input)
    model[2].register_forward_hook(lambda m, a, o: o * 2 if m.training else o + 1)
    with pytest.raises(hw.UnconvertibleHookError) as info:
        hw.convert(model, (torch.randn(2, 3, 8, 8),))
    reasons = [(b.name, b.reason) for b in info.value.blockers]
    assert "Counter" in reasons[0][0] and "Python state" in reasons[0][1]
    assert "modifies its args in place" in reasons[1][1]
    assert "different operations in train and eval mode" in reasons[2][1]


def test_captured_graph_json_round_trip_and_refusals():
    model = small()
    model[0].register_forward_hook(lambda m, a, o: o * o.mean())
    converted = hw.convert(model, (torch.randn(2, 3, 8, 8),))
    graph = only_wrapper(converted).config()["graph"]
    gm = decode(graph)
    # Only the conv's output: its input (args[0]) is never read, so it is passed along, not stored.
    assert graph["inputs"] == 1
    assert only_wrapper(converted).config()["in_template"] == [{"opaque": True}, {"tensor": True}]
    t = torch.randn(2, 4, 6, 6)
    assert torch.equal(gm(t)[0], t * t.mean())

    def broken(**change):
        return {**graph, **change}

    bad = [
        broken(nodes=[{"op": "os.system", "args": ["echo hi"], "kwargs": {}}]),
        broken(nodes=[{"op": "builtins.eval", "args": ["1"], "kwargs": {}}]),
        broken(nodes=[{"op": "aten.__class__.default", "args": [], "kwargs": {}}]),
        broken(nodes=[{"op": "aten.no_such_op.default", "args": [], "kwargs": {}}]),
        broken(nodes=[{"op": "aten.mul.Tensor", "args": [{"n": 7}, 2], "kwargs": {}}]),
        broken(nodes=[{"op": "aten.mul.Tensor", "args": [{"n": 0}, {"py": "__import__('os')"}], "kwargs": {}}]),
        broken(nodes="x"),
        broken(version=99),
        broken(outputs=[{"n": 50}]),
    ]
    for data in bad:
        with pytest.raises(GraphFormatError):
            decode(data)


def test_captured_graph_follows_every_size_the_hook_treats_symbolically():
    """Issue 22: a captured graph kept only the batch dimension symbolic. A hook that builds
    a ramp as wide as its activation (torch.linspace takes the width as a plain int) works
    at every batch, spatial size and aspect ratio, as the hook does."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).eval()
    plain = copy.deepcopy(model)  # the same weights, without the hook
    model[0].register_forward_hook(lambda m, a, out: out * torch.linspace(0, 1, out.shape[-1]))
    converted = hw.convert(model, (torch.randn(2, 3, 32, 32),))
    wrapper = only_wrapper(converted)
    assert type(wrapper) is W.CapturedHook and wrapper.input_dims == [["d0", "d1", "d2", "d3"]]
    assert [s["captured"] for s in wrapper.symbols.values()] == [2, 4, 32, 32]
    checks = {c.what: c.status for c in hw.conversion_report(converted).checks}
    resized = "a second input drawn like the example, with other sizes (input 0 [2, 3, 32, 32] -> [2, 3, 64, 64])"
    assert checks[resized] == "passed"
    for shape in [(2, 3, 32, 32), (2, 3, 64, 64), (1, 3, 64, 48), (3, 3, 17, 9), (1, 3, 1, 1)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = model(x)
            assert not torch.equal(expected, plain(x)) or shape[-1] == 1, shape  # the hook matters
            assert torch.equal(converted(x), expected), shape


def fixed_width_model():
    """A Linear over (batch, 8, 4) sequences whose hook multiplies by an (8, 4) table: the
    hook itself fixes the sequence length and the width."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4)).eval()
    table = torch.randn(8, 4)
    model[0].register_forward_hook(lambda m, a, o: o * table)
    return model


def test_a_size_the_hook_fixes_is_recorded_and_refused_by_name(tmp_path):
    model = fixed_width_model()
    converted = hw.convert(model, (torch.randn(2, 8, 4),))
    wrapper = only_wrapper(converted)
    assert wrapper.input_dims == [["d0", 8, 4]]
    # the hooked model refuses another length too, so convert's check skips it and says why
    skipped = [c for c in hw.conversion_report(converted).checks if c.status == "skipped"]
    assert [c.what for c in skipped] == [f"a second input drawn like the example, with other sizes (input 0 {change})"
                                         for change in ("[2, 8, 4] -> [2, 11, 4]", "[2, 8, 4] -> [2, 8, 7]")]
    assert all(c.detail.startswith("the hooked model refused it: RuntimeError") for c in skipped)
    x = torch.randn(5, 8, 4)  # another batch size: the batch dimension stays symbolic
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))
    path = tmp_path / "fixed.safetensors"
    hw.save(converted, path)
    loaded = hw.load(path, base=lambda: nn.Sequential(nn.Linear(4, 4)).eval())
    for candidate in (converted, loaded):
        with pytest.raises(hw.HookwrapError) as info:
            candidate(torch.randn(2, 11, 4))
        text = str(info.value)
        assert text.startswith("0.hookwrap_post.0: the post-hook 'fixed_width_model.<locals>.<lambda>'"), text
        assert "the output it is given has size 11 in dim 1" in text and "size it had at capture, 8" in text


def test_a_recognised_pattern_that_branches_on_a_size_is_captured_instead():
    """Recognition reads one trace, which cannot see ``if o.shape[-1] > 8``: the recognised
    Dropout would drop at every size. Checked at other sizes, it is captured instead, and
    the captured graph keeps the branch's condition as a size it refuses by name."""
    model = small()
    model[0].register_forward_hook(lambda m, a, o: F.dropout(o, 0.3, True) if o.shape[-1] > 4 else o)
    x = torch.randn(2, 3, 8, 8)
    converted = hw.convert(model, (x,))
    wrapper = only_wrapper(converted)
    assert type(wrapper) is W.CapturedHook
    assert wrapper.symbols[wrapper.input_dims[0][3]]["min"] == 5  # export's guard: width > 4
    check_equal_in_both_modes(model, converted, x)


def test_the_size_check_gives_each_run_its_own_input_once_a_run_writes_into_it():
    """The size check runs the hook and the module on one shared grown input while neither
    writes into it. This hook zeroes its output in place for a batch larger than at the
    recording: had the module then run on the zeroed tensor, a Dropout would have agreed
    with it (zeros stay zeros) and stood in for the hook."""
    from hookwrap import capture

    model = small()
    model[0].register_forward_hook(lambda m, a, o: o.mul_(0) if o.shape[0] > 2 else F.dropout(o, 0.3, True))
    [info] = [h for h in hw.inventory(model) if h.path == "0"]
    site = capture.Site(info, "0", model[0], "post", False)
    calls, _ = capture.record(model, (torch.randn(2, 3, 8, 8),), [site], seed=0)
    [call] = calls[site.key]
    dropout = W.Dropout(0.3, always=True)
    assert capture._validate(site, dropout, [call]) is None  # at the recorded size, the hook is this Dropout
    assert not capture._sizes_agree(site, dropout, call)  # at batch 5 it zeroes instead


class Layer(nn.Module):
    """A layer called with keyword flags, as transformers calls its decoder layers."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x, *, negate=False, scale=1.0):
        y = self.lin(x) * scale
        return -y if negate else y


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = Layer()

    def forward(self, x, negate=False):
        return self.layer(x, negate=negate, scale=2.0)


def test_flags_a_pre_hook_passes_along_are_not_fixed_at_their_captured_values():
    """A with_kwargs pre-hook that returns the keyword arguments it got: the flags in them
    were stored as constants at their captured values (falcon's output_attentions=False),
    so the converted layer ignored the flag it was called with."""
    torch.manual_seed(0)
    model = Outer().eval()
    model.layer.register_forward_pre_hook(lambda m, args, kwargs: ((args[0] * 0.5,), kwargs), with_kwargs=True)
    x = torch.randn(2, 4)
    converted = hw.convert(model, (x,), call_options=[{"negate": True}])
    wrapper = only_wrapper(converted, "pre", "layer")
    assert type(wrapper) is W.CapturedHook
    with torch.no_grad():
        for negate in (False, True):
            assert torch.equal(converted(x, negate), model(x, negate)), negate
        assert not torch.equal(converted(x, True), converted(x, False))


class Block(nn.Module):
    """A layer with an identity hook point, as TransformerLens places them."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.hook_z = nn.Identity()
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.hook_z(self.lin(x)))


def test_hooks_that_write_into_their_own_activation_in_place_convert():
    """The interpretability idiom ``z[:, 0] = 0`` (return None) was refused as modifying the
    hook's args: on an identity hook point the output is the input. Writes into the hook's own
    activation are its effect, functionalised into a returned value; the same for a
    pre-hook's argument."""
    torch.manual_seed(0)
    model = Block().eval()
    plain = copy.deepcopy(model)

    def ablate(module, args, out):
        out[:, 0] = 0.0

    def clamp_input(module, args):
        args[0].clamp_(min=-0.5)

    model.hook_z.register_forward_hook(ablate)
    model.out.register_forward_pre_hook(clamp_input)
    x = torch.randn(3, 4)
    with torch.no_grad():
        expected = model(x)
        assert not torch.equal(expected, plain(x))
    converted = hw.convert(model, (x,))
    for wrapper in (only_wrapper(converted, "post", "hook_z"), only_wrapper(converted, "pre", "out")):
        assert type(wrapper) is W.CapturedHook
    with torch.no_grad():
        for batch in (3, 1, 7):
            xb = torch.randn(batch, 4)
            assert torch.equal(converted(xb), model(xb))


def test_a_forward_hook_that_writes_into_the_modules_input_is_refused():
    """After the module ran, writing into its input changes what the caller still holds: no
    wrapper can do that."""
    model = small()
    model[2].register_forward_hook(lambda m, a, o: a[0].mul_(0.5))
    with pytest.raises(hw.UnconvertibleHookError, match="modifies its args in place after the module ran"):
        hw.convert(model, (torch.randn(2, 3, 8, 8),))
