"""Capture: recognised patterns, CapturedHook, observers and what cannot be captured."""

from __future__ import annotations

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
