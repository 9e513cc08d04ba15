"""hw.export_onnx: conversion of a copy, both exporters, dynamic batch, external data."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import DropoutHook, build, hook_table
from torch import nn

import hookwrap as hw


def test_export_converts_a_copy_and_describes_the_graph(tmp_path):
    model = build("resnet18")
    model.fc.register_forward_hook(lambda m, a, o: o * 0.5)
    table = hook_table(model)
    x = torch.randn(2, 3, 64, 64)
    result = hw.export_onnx(model, (x,), tmp_path / "r.onnx", dynamic_batch=True)
    assert hook_table(model) == table  # the model keeps its hooks
    assert result.converted and result.exporter == "dynamo" and result.opset >= 18
    assert result.node_counts["Conv"] == 20 and result.random_ops == {}
    assert result.files == [tmp_path / "r.onnx"] and not result.external_data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.onnx"]
    proto = onnx.load(str(tmp_path / "r.onnx"))
    assert result.nodes == len(proto.graph.node)
    assert result.input_names == [i.name for i in proto.graph.input]
    session = ort.InferenceSession(str(tmp_path / "r.onnx"), providers=["CPUExecutionProvider"])
    x5 = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        expected = model(x5).numpy()
    got = session.run(None, {result.input_names[0]: x5.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)
    assert result.to_dict()["bytes"] == (tmp_path / "r.onnx").stat().st_size


def test_legacy_exporter_and_its_limits(tmp_path):
    model = build("mobilenet_v3_small")
    model.classifier[0].register_forward_hook(lambda m, a, o: torch.clamp(o, -2.0, 2.0))
    x = torch.randn(1, 3, 64, 64)
    result = hw.export_onnx(model, (x,), tmp_path / "m.onnx", exporter="legacy", dynamic_batch=True)
    assert result.exporter == "legacy" and result.opset == 17 and result.node_counts.get("Clip", 0) >= 1
    assert hw.check_parity(model, tmp_path / "m.onnx", (x,))

    # vgg16's adaptive pooling at 64x64 (2x2 -> 7x7) is beyond the legacy exporter
    vgg = build("vgg16")
    vgg.features[0].register_forward_hook(hw.hooks.Scale(0.5))
    with pytest.raises(hw.ExportError, match="legacy exporter failed .*adaptive_avg_pool2d.*exporter='dynamo'"):
        hw.export_onnx(vgg, (torch.randn(1, 3, 64, 64),), tmp_path / "v.onnx", exporter="legacy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # nothing half-written


def test_random_ops_are_reported(tmp_path):
    model = build("vgg16")
    model.apply(DropoutHook(0.2).register_hook)
    result = hw.export_onnx(model, (torch.randn(1, 3, 32, 32),), tmp_path / "v.onnx")
    assert result.random_ops == {"RandomUniformLike": 13}
    assert result.stochastic


def test_bad_arguments(tmp_path):
    model = build("resnet18")
    x = (torch.randn(1, 3, 32, 32),)
    with pytest.raises(hw.InvalidArgumentError, match="exporter must be"):
        hw.export_onnx(model, x, tmp_path / "a.onnx", exporter="tflite")
    with pytest.raises(hw.InvalidArgumentError, match="must end with .onnx"):
        hw.export_onnx(model, x, tmp_path / "a.pb")
    with pytest.raises(hw.InvalidArgumentError, match="does not exist"):
        hw.export_onnx(model, x, tmp_path / "missing" / "a.onnx")
    with pytest.raises(hw.InvalidArgumentError, match="tuple of positional inputs"):
        hw.export_onnx(model, x[0], tmp_path / "a.onnx")


def test_large_model_uses_external_data_and_passes_parity(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(34)]).eval()  # 2.28 GB of float32
    assert sum(p.numel() * 4 for p in model.parameters()) > 2.2e9
    for layer in list(model)[::5]:
        layer.register_forward_hook(lambda m, a, o: torch.relu(o) * 0.5)
    x = torch.randn(2, 4096)
    result = hw.export_onnx(model, (x,), tmp_path / "big.onnx", dynamic_batch=True)
    assert result.external_data and sorted(f.name for f in result.files) == ["big.onnx", "big.onnx.data"]
    assert (tmp_path / "big.onnx").stat().st_size < 10_000_000
    assert (tmp_path / "big.onnx.data").stat().st_size > 2.2e9
    report = hw.check_parity(model, tmp_path / "big.onnx", (x,))
    assert report, report.summary()
    assert report.inputs[-1]["shapes"] == [[4, 4096]]  # another batch size, since the batch is dynamic


def test_external_weights_stay_mapped_from_the_file_in_the_parity_session(tmp_path):
    """onnxruntime maps external data from the file; hookwrap's sessions turn prepacking
    off for such files, so the weights are not copied into private memory beside the torch
    model's own (measured in a fresh process: private memory after building the session and
    running it), and parity still holds."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(12)]).eval()  # 201 MB of float32
    model[0].register_forward_hook(lambda m, a, o: o * 0.5)
    x = torch.randn(2, 2048)
    hw.export_onnx(model, (x,), tmp_path / "embedded.onnx")
    proto = onnx.load(str(tmp_path / "embedded.onnx"))
    onnx.save_model(proto, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
                    size_threshold=1024)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 2e8
    assert hw.check_parity(model, tmp_path / "ext.onnx", (x,))
    code = textwrap.dedent("""
        import sys, numpy as np
        from hookwrap._onnx import open_session, read_onnx
        session = open_session(read_onnx(sys.argv[1]))
        session.run(None, {session.get_inputs()[0].name: np.ones((2, 2048), np.float32)})
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        print(int(status["RssAnon"].split()[0]) * 1024, int(status["RssFile"].split()[0]) * 1024)
    """)
    private = {}
    for name in ("ext.onnx", "embedded.onnx"):
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        private[name] = int(proc.stdout.split()[0])
    # the embedded file's weights are private (read from the protobuf): the measurement can tell
    assert private["embedded.onnx"] - private["ext.onnx"] > 1.5e8, private


def test_export_check_and_bisect_leave_the_callers_model_as_it_was(tmp_path):
    """Their copies share the unchanged tensors (no 500 MB copies), and change none of them;
    the tensors that baking changes are copied."""
    from helpers import state_equal
    from torch.nn.utils import prune

    model = build("resnet18")

    prune.l1_unstructured(model.conv1, "weight", amount=0.3)
    model.fc.register_forward_hook(lambda m, a, o: o * 2.0)
    before = {k: (v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}
    hooks = [(h.path, h.kind, h.hook_id) for h in hw.inventory(model)]
    x = torch.randn(2, 3, 64, 64)
    result = hw.export_onnx(model, (x,), tmp_path / "r18.onnx")
    assert {a.action for a in result.report} >= {"baked", "converted"}
    assert hw.check_parity(model, result.path, (x,), random_inputs=1)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(after[k].data_ptr() == ptr and torch.equal(after[k], value) for k, (ptr, value) in before.items())
    assert [(h.path, h.kind, h.hook_id) for h in hw.inventory(model)] == hooks

    plain = build("resnet18")
    hw.export_onnx(plain, (x,), tmp_path / "plain.onnx")
    hw.bisect(plain, tmp_path / "plain.onnx", (x,))
    hw.save(build("resnet18", seed=3), tmp_path / "other.safetensors")
    report = hw.check_parity(plain, tmp_path / "plain.onnx", (x,), weights=tmp_path / "other.safetensors")
    assert not report  # the copy got the other weights...
    assert state_equal(plain.state_dict(), build("resnet18").state_dict())  # ...the caller's model did not


def test_streamed_file_parses_to_what_the_exporters_own_save_writes(tmp_path):
    """hookwrap writes each weight once, straight from memory; the file must parse to the
    very model that torch.onnx's save writes, weights, value infos and all."""
    from hookwrap._onnx_write import write_model
    from hookwrap._torch import quiet

    model = build("resnet18").eval()
    model.fc.register_forward_hook(lambda m, a, o: o * 2.0)
    x = torch.randn(2, 3, 64, 64)
    with quiet():
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    program.save(str(tmp_path / "theirs.onnx"))
    assert write_model(program, tmp_path / "ours.onnx") is True
    theirs, ours = onnx.load(str(tmp_path / "theirs.onnx")), onnx.load(str(tmp_path / "ours.onnx"))
    assert len(ours.graph.initializer) == len(theirs.graph.initializer) > 20
    assert ours.SerializeToString() == theirs.SerializeToString()
    session = ort.InferenceSession(str(tmp_path / "ours.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(expected).max() > 1e-2  # outputs large enough to tell right from wrong
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_a_t5_encoder_exports_without_the_caller_turning_off_autograd(tmp_path):
    """T5's attention traces a view the dynamo exporter refuses while autograd records: the
    export failed unless the caller wrapped it in torch.no_grad(), and the error pointed at
    the legacy exporter."""
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=128, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)
    model = transformers.T5EncoderModel(config).eval()
    model.encoder.block[0].register_forward_hook(lambda m, a, o: (o[0] * 1.5, *o[1:]))
    ids = torch.randint(0, 128, (2, 8))
    assert torch.is_grad_enabled()
    result = hw.export_onnx(model, (ids,), tmp_path / "t5.onnx")
    assert result.converted
    with torch.no_grad():
        top = model(ids).last_hidden_state.abs().max().item()
    assert hw.check_parity(model, result.path, (ids,), atol=1e-4 * top)
