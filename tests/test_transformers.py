"""Hugging Face transformers models with their default settings (use_cache=True), built
from tiny configs, with the hooks LLM users attach: a steering closure on every block, a
keyword pre-hook, and Scale on every nn.Linear."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import ROOT
from libmodels import hf_model, hook_llm, scaled_atol, token_ids

import hookwrap as hw

TESTS = str(ROOT / "tests")

FRESH = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    import hookwrap as hw
    from libmodels import hf_model, token_ids
    model = hw.load({path!r}, base=lambda: hf_model({family!r}, seed=3))
    with torch.no_grad():
        torch.save(model(*token_ids({family!r})).logits, {out!r})
""")


def logits(model, inputs):
    with torch.no_grad():
        return model(*inputs).logits


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_with_default_config_converts_saves_loads_and_exports(family, tmp_path):
    model = hook_llm(hf_model(family))
    assert model.config.use_cache
    inputs = token_ids(family)
    expected = logits(model, inputs)
    converted = hw.convert(model, inputs)  # GPT-2 failed here: its blocks get the KV cache positionally
    assert not hw.inventory(converted).where(kind="forward") and torch.equal(logits(converted, inputs), expected)
    report = hw.conversion_report(converted)
    assert report.counts()["converted"] == len(hw.inventory(model).where(kind="forward")) + 1

    path = tmp_path / f"{family}.safetensors"
    hw.save(converted, path)
    out = tmp_path / "logits.pt"
    code = FRESH.format(tests=TESTS, path=str(path), family=family, out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(torch.load(out), expected)

    # The model returns its KV cache, which no exporter can flatten: a clear error, not a traceback.
    with pytest.raises(hw.ExportError, match=r"output\['cache'\] \(DynamicCache\).*use_cache = False"):
        hw.export_onnx(model, inputs, tmp_path / "cached.onnx")
    with pytest.raises(Exception, match="DynamicCache"):  # the bare exporter fails there too
        torch.onnx.export(model, inputs, dynamo=True)
    model.config.use_cache = False  # the fix the error gives: the logits are the same
    assert torch.equal(logits(model, inputs), expected)
    result = hw.export_onnx(model, inputs, tmp_path / f"{family}.onnx")
    assert result.converted and len(result.output_names) == 1
    report = hw.check_parity(model, result.path, inputs, atol=scaled_atol(expected))
    assert report, report.summary()


@pytest.mark.parametrize("family", ["bert", "vit"])
def test_encoders_convert_and_export(family, tmp_path):
    model = hook_llm(hf_model(family))
    inputs = token_ids(family)
    expected = logits(model, inputs)
    converted = hw.convert(model, inputs)
    assert torch.equal(logits(converted, inputs), expected)
    result = hw.export_onnx(model, inputs, tmp_path / f"{family}.onnx")
    assert result.converted
    assert hw.check_parity(model, result.path, inputs, atol=scaled_atol(expected))


def test_convert_refuses_a_hook_that_changes_outputs_in_a_way_the_wrappers_cannot_see():
    """The end-to-end check catches what per-hook checks cannot: two hooks that share state."""
    model = hf_model("llama")
    blocks = model.model.layers
    seen = {}

    def remember(module, args, output):  # returns None: an observer, on its own
        seen["h"] = output

    def reuse(module, args, output):  # reads what the other hook stored
        return output + seen["h"]

    blocks[0].register_forward_hook(remember)
    blocks[1].register_forward_hook(reuse)
    inputs = token_ids("llama")
    with pytest.raises(hw.UnconvertibleHookError) as info:
        hw.convert(model, inputs)
    blamed = {(b.path, b.name.rsplit(".", 1)[-1]) for b in info.value.blockers}
    assert blamed == {("model.layers.0", "remember"), ("model.layers.1", "reuse")}, str(info.value)
    assert "second input" in str(info.value) and "output['logits']" in str(info.value)
