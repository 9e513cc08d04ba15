"""hw.bisect: planted faults at known layers, correct exports, the plot, the CLI."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import build
from onnx import numpy_helper
from PIL import Image

import hookwrap as hw

SIZES = {"resnet18": 64, "vgg16": 32, "mobilenet_v3_small": 64}


def scopes(node) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            return ast.literal_eval(prop.value)[:-1]
    return []


@pytest.fixture(scope="module", params=list(SIZES))
def case(request, tmp_path_factory):
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    model = build(name)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_hook(hw.hooks.Scale(0.9))
    x = torch.randn(1, 3, SIZES[name], SIZES[name])
    hw.export_onnx(model, (x,), folder / "good.onnx")
    good = hw.bisect(model, folder / "good.onnx", (x,))
    return name, model, x, folder, good


def test_a_correct_export_has_no_divergent_layer(case):
    name, _, _, _, good = case
    assert good.first_divergent is None and good, good.summary()
    assert len(good.layers) >= 10
    assert all(reason for _, reason in good.skipped)


def test_bisect_leaves_the_callers_random_state_alone(case):
    name, model, x, folder, good = case
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    again = hw.bisect(model, folder / "good.onnx", (x,))
    assert torch.equal(torch.get_rng_state(), state)
    assert [layer.path for layer in again.layers] == [layer.path for layer in good.layers]


@pytest.mark.parametrize("shift", [0.5, np.inf], ids=["plus_half", "plus_inf"])
def test_perturbed_initializer_is_found_at_its_layer(case, shift):
    """Shift the bias of a Conv/Gemm in the middle of the network by 0.5, or its weight
    where the exporter removed the (zero) bias. (A small weight shift can vanish in these
    randomly initialised models, whose deep activations can be tiny; a bias shift moves
    that layer's output by 0.5, far beyond the tolerance.) With +inf the layer's output
    turns infinite where the reference is finite: that layer, not a later one, diverges."""
    name, model, x, folder, good = case
    compared = [layer.path for layer in good.layers]
    proto = onnx.load(str(folder / "good.onnx"))
    weights = {i.name: i for i in proto.graph.initializer}
    layers = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm") and scopes(n) and scopes(n)[-1] in compared]
    users = [(n, n.input[2]) for n in layers if len(n.input) > 2 and n.input[2] in weights]
    users = users or [(n, n.input[1]) for n in layers if n.input[1] in weights]
    node, bias = users[len(users) // 2]
    layer_k = bias.rsplit(".", 1)[0]              # the module the initializer belongs to
    fused_into = scopes(node)[-1]                 # the module whose ONNX node uses it (conv+bn fused)
    init = weights[bias]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(shift), bias))
    onnx.save(proto, str(folder / "perturbed.onnx"))
    report = hw.bisect(model, folder / "perturbed.onnx", (x,))
    assert report.first_divergent in (layer_k, fused_into), (bias, report.summary())
    index = compared.index(report.first_divergent)
    assert all(layer.passed for layer in report.layers[:index])


REPLACE = {"Relu": "Sigmoid", "HardSwish": "HardSigmoid"}


def test_replaced_op_is_found_at_its_layer(case):
    name, model, x, folder, good = case
    compared = {layer.path: layer for layer in good.layers}
    proto = onnx.load(str(folder / "good.onnx"))
    leaves = {p for p, m in model.named_modules() if not list(m.children())}
    candidates = [n for n in proto.graph.node if n.op_type in REPLACE and scopes(n)
                  and scopes(n)[-1] in compared and scopes(n)[-1] in leaves]
    node = candidates[len(candidates) // 2]
    layer_k = scopes(node)[-1]
    node.op_type = REPLACE[node.op_type]
    onnx.save(proto, str(folder / "replaced.onnx"))
    report = hw.bisect(model, folder / "replaced.onnx", (x,))
    assert report.first_divergent == layer_k, report.summary()
    assert not report


def test_plot_is_a_valid_png(case, tmp_path):
    name, model, x, folder, good = case
    path = good.plot(tmp_path / "errors.png")
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and 600 <= image.width <= 3000 and 300 <= image.height <= 1000


def test_stochastic_models_are_refused(tmp_path):
    model = build("resnet18")
    model.layer1.register_forward_hook(hw.hooks.Dropout2d(0.2, always=True))
    x = torch.randn(1, 3, 32, 32)
    hw.export_onnx(model, (x,), tmp_path / "s.onnx")
    with pytest.raises(hw.HookwrapError, match="needs a deterministic model"):
        hw.bisect(model, tmp_path / "s.onnx", (x,))


CLI_FACTORY = textwrap.dedent("""
    import torch, torchvision

    def build():
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval()
        model.layer2.register_forward_hook(lambda m, a, o: o * 0.5)
        return model, (torch.randn(1, 3, 64, 64),)
""")


def test_cli_check_bisect_and_plot(tmp_path):
    (tmp_path / "f.py").write_text(CLI_FACTORY)
    sys.path.insert(0, str(tmp_path))
    try:
        from f import build as factory  # noqa: PLC0415
    finally:
        sys.path.remove(str(tmp_path))
    model, (x,) = factory()
    hw.export_onnx(model, (x,), tmp_path / "good.onnx")
    proto = onnx.load(str(tmp_path / "good.onnx"))
    init = next(i for i in proto.graph.initializer if i.name == "layer3.1.conv1.weight")
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.05), init.name))
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    hookwrap = str(Path(sys.executable).parent / "hookwrap")
    proc = subprocess.run([hookwrap, "check", "bad.onnx", "--reference", "f.py:build", "--bisect", "--plot", "p.png",
                           "--json", "r.json"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    assert "bisect: first divergent module: layer3.1.bn1" in proc.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["bisect"]["first_divergent"] == "layer3.1.bn1"
    assert (tmp_path / "p.png").stat().st_size > 10_000
