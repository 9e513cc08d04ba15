"""Wrapper modules and the host class swap."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from helpers import build, state_equal
from torch import nn

import hookwrap as hw
from hookwrap import wrappers as W


def test_host_keeps_isinstance_keys_and_prints_wrappers():
    conv = nn.Conv2d(3, 4, 3)
    keys = list(conv.state_dict())
    W.install(conv, post=[W.Dropout2d(0.2, always=True)])
    assert isinstance(conv, nn.Conv2d) and type(conv).__name__ == "HookwrappedConv2d"
    assert list(conv.state_dict()) == keys
    text = str(conv)
    assert "(hookwrap_post): ModuleList" in text and "Dropout2d(p=0.2, always=True)" in text
    import inspect

    assert str(inspect.signature(conv.forward)) == str(inspect.signature(nn.Conv2d(1, 1, 1).forward))


def test_install_order_new_pre_outside_new_post_after():
    lin = nn.Linear(2, 2)
    W.install(lin, pre=[W.Scale(2.0)], post=[W.Shift(1.0)])
    W.install(lin, pre=[W.Scale(3.0)], post=[W.Shift(5.0)])
    pre, post = W.host_wrappers(lin)
    assert [w.config() for w in pre] == [{"factor": 3.0}, {"factor": 2.0}]
    assert [w.config() for w in post] == [{"offset": 1.0}, {"offset": 5.0}]
    x = torch.randn(4, 2)
    with torch.no_grad():
        assert torch.equal(lin(x), nn.Linear.forward(lin, x * 3.0 * 2.0) + 1.0 + 5.0)


def test_a_wrapper_overriding_hookwrap_post_is_called_through_it():
    """Subclasses may override hookwrap_post (it sees the host and its inputs); the host
    must call that override, not the elementwise shortcut."""

    class AddInput(W.Wrapper):
        kind = "test.AddInput"

        def hookwrap_post(self, host, args, kwargs, output):
            return output + args[0]

    class Double(W.Wrapper):
        kind = "test.Double"

        def _run(self, x, training):
            return x * 2.0

    assert not AddInput.elementwise and Double.elementwise and W.Scale.elementwise
    lin = nn.Linear(3, 3)
    W.install(lin, post=[AddInput(), Double()])
    x = torch.randn(2, 3)
    with torch.no_grad():
        assert torch.equal(lin(x), (nn.Linear.forward(lin, x) + x) * 2.0)


@pytest.mark.parametrize("container", ["sequential", "modulelist", "moduledict"])
def test_containers_do_not_see_the_wrapper_lists(container):
    layers = [nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3)]

    class UsesList(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(layers)

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    class UsesDict(nn.ModuleDict):
        def forward(self, x):
            for _, layer in self.items():
                x = layer(x)
            return x

    if container == "sequential":
        model, host = nn.Sequential(*layers), None
    elif container == "modulelist":
        model = UsesList()
        host = model.layers
    else:
        model = UsesDict({"a": layers[0], "b": layers[1], "c": layers[2]})
        host = None
    host = host if host is not None else model
    x = torch.randn(2, 3)
    with torch.no_grad():
        expected = model(x) * 2.0 if container != "modulelist" else model(x)
    W.install(host, post=[W.Scale(2.0)])
    assert len(host) == 3
    assert [type(m) for m in host] == [nn.Linear, nn.ReLU, nn.Linear] or container == "moduledict"
    if container == "moduledict":
        assert list(host.keys()) == ["a", "b", "c"]
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    if container == "sequential":
        assert type(host[1:]) is nn.Sequential and len(host[1:]) == 2


def test_deepcopy_pickle_and_torch_save_round_trip():
    model = build("resnet18")
    W.install(model.layer1, post=[W.Dropout2d(0.3, always=True)])
    W.install(model.fc, pre=[W.Clamp(-1.0, 1.0)], post=[W.Activation(nn.LogSoftmax(dim=1))])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(0)
        expected = model(x)
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert type(clone.layer1) is type(model.layer1) and state_equal(clone.state_dict(), model.state_dict())
            torch.manual_seed(0)
            assert torch.equal(clone(x), expected)
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        torch.manual_seed(0)
        assert torch.equal(loaded(x), expected)


def test_wrapper_specs_round_trip_through_the_registry():
    wrappers = [
        W.Dropout(0.1), W.Dropout1d(0.2, always=True), W.Dropout2d(0.3), W.Dropout3d(0.4, always=True),
        W.AlphaDropout(0.1), W.FeatureAlphaDropout(0.2, always=True), W.Scale(2), W.Scale(divisor=3.0),
        W.Shift(-1.5), W.Clamp(None, 4.0), W.Activation(nn.Hardtanh(-2.0, 2.0)), W.GaussianNoise(0.1, always=True),
        W.Chain([W.Scale(0.5), W.Activation(nn.ReLU())]),
    ]
    for w in wrappers:
        spec = w.spec()
        rebuilt = W.build_wrapper(spec)
        assert type(rebuilt) is type(w) and rebuilt.spec() == spec


@pytest.mark.parametrize("spec, message", [
    ({"type": "os.system", "config": {}}, "unknown wrapper type 'os.system'"),
    ({"type": "Dropout", "config": {"p": 2.0}}, "probability p must be"),
    ({"type": "Dropout", "config": {"p": 0.1, "evil": 1}}, "does not fit"),
    ({"type": "Activation", "config": {"name": "eval", "kwargs": {}}}, "unknown activation"),
    ({"type": "Activation", "config": {"name": "GELU", "kwargs": {"approximate": "banana"}}}, "cannot be built"),
    ({"type": "Chain", "config": {"items": [{"type": "Nope"}]}}, "unknown wrapper type 'Nope'"),
    ("Dropout", "a wrapper spec must be"),
])
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(hw.InvalidArgumentError, match=message):
        W.build_wrapper(spec)


def test_user_wrapper_registration_conflicts():
    class Mine(W.Wrapper):
        kind = "Scale"

        def config(self):
            return {}

    with pytest.raises(hw.InvalidArgumentError, match="already registered by Scale"):
        hw.register_converter(object, lambda h, m: Mine(), wrapper=Mine)
    with pytest.raises(hw.InvalidArgumentError, match="subclass of hookwrap.wrappers.Wrapper"):
        hw.register_converter(object, lambda h, m: None, wrapper=nn.ReLU)
