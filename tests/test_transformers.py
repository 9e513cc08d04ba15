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
from libmodels import hf_model, hook_llm, llm_behaviour, llm_hooks, scaled_atol, token_ids

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
    # the second input runs 3 tokens longer: the captured graph of reuse kept what it read
    # (8 tokens' worth) as a constant and fails there, and the observer that stored it is named
    text = str(info.value)
    assert "fails on a second input drawn like the example, with other sizes" in text, text
    assert "stripped as an observer, but it changes Python state" in text, text


LOADED = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    import hookwrap as hw
    from libmodels import hf_model, llm_behaviour
    for which in {hooks!r}:
        model = hw.load({folder!r} + f"/{{which}}.safetensors", base=lambda: hf_model({family!r}, seed=3))
        torch.save(llm_behaviour(model), {folder!r} + f"/{{which}}.loaded.pt")
""")
LLM_HOOKS = ("ablate", "steer", "steer_last")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_steered_llms_match_the_hooked_model_at_every_length_and_in_generation(family, tmp_path):
    """Issue 22: a captured hook was frozen at the example's sequence length, so a converted
    or loaded LLM failed at other lengths and in generate(). The head-ablation pre-hook reads
    the sequence length from its activation; the last-position steering hook reads it too."""
    plain = llm_behaviour(hf_model(family))
    example = token_ids(family)  # batch 2, length 8
    expected = {}
    for which in LLM_HOOKS:
        hooked = llm_hooks(hf_model(family), which)
        expected[which] = llm_behaviour(hooked)
        # the hooks matter: a converted model that lost them would fail every comparison below
        assert all(not torch.equal(expected[which][k], plain[k]) for k in plain if k != "tokens"), which
        converted = hw.convert(hooked, example)
        got = llm_behaviour(converted)
        for key, value in expected[which].items():
            assert torch.equal(got[key], value), (which, key)
        checks = {c.what: c.status for c in hw.conversion_report(converted).checks}
        resized = "a second input drawn like the example, with other sizes (input 0 [2, 8] -> [2, 11])"
        assert checks[resized] == "passed"
        assert checks["greedy generate() of 3 tokens from the example inputs"] == "passed"
        hw.save(converted, tmp_path / f"{which}.safetensors")
    code = LOADED.format(tests=TESTS, hooks=LLM_HOOKS, folder=str(tmp_path), family=family)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for which in LLM_HOOKS:
        loaded = torch.load(tmp_path / f"{which}.loaded.pt")
        for key, value in expected[which].items():
            assert torch.equal(loaded[key], value), (which, key)


def test_a_captured_graph_refuses_a_size_it_fixed_by_name():
    """A hook that fixes the hidden size (it adds a vector of that size) converts; calling the
    wrapper with another hidden size is a HookwrapError naming the wrapper, input, dimension
    and the size at capture, never a raw error from inside the graph."""
    model = llm_hooks(hf_model("llama"), "ablate")
    converted = hw.convert(model, token_ids("llama"))
    proj = converted.model.layers[0].self_attn.o_proj
    wrapper = proj.hookwrap_pre[0]
    assert wrapper.input_dims == [["d0", "d1", 32]]
    with pytest.raises(hw.HookwrapError) as info:
        proj(torch.randn(2, 5, 48))
    text = str(info.value)
    assert text.startswith("model.layers.0.self_attn.o_proj.hookwrap_pre.0: ") and "the args[0] it is given" in text
    assert "size 48 in dim 2" in text and "specialised to the size it had at capture, 32" in text


def outputs(model, inputs, **options):
    with torch.no_grad():
        return model(*inputs, **options)


@pytest.mark.parametrize("family", ["dinov2", "clip_vision"])
def test_converted_vision_models_keep_hidden_states_and_attentions(family):
    """Issue 22: transformers collects hidden states with forward hooks it installs on the
    first call with output_hidden_states=True; convert stripped them as observers and the
    converted model returned no hidden states. They are the model's own machinery: kept."""
    plain = hf_model(family)
    inputs = token_ids(family)
    plain_states = outputs(plain, inputs, output_hidden_states=True).hidden_states
    model = hook_llm(hf_model(family))
    first = outputs(model, inputs, output_hidden_states=True)  # transformers installs its hooks now
    kept = hw.inventory(model).where(plan="keep", kind="forward")
    assert kept and all(h.origin == "transformers" and h.is_model_machinery for h in kept)
    assert len(first.hidden_states) == 4
    assert all(not torch.equal(a, b) for a, b in zip(first.hidden_states[1:], plain_states[1:]))  # hooks matter
    converted = hw.convert(model, inputs)
    for options in ({}, {"output_hidden_states": True}, {"output_attentions": True}, {"return_dict": False},
                    {"output_hidden_states": True, "return_dict": False}):
        assert hw._diff.first_difference(outputs(converted, inputs, **options),
                                         outputs(model, inputs, **options)) is None, options
    report = hw.conversion_report(converted)
    assert {c.what: c.status for c in report.checks}["the example inputs with output_hidden_states=True"] == "passed"
    assert {a.action for a in report if a.origin == "transformers"} == {"kept"}


def test_segformer_whose_forward_asks_for_hidden_states_converts():
    """Segformer asks its encoder for hidden states itself: convert failed with a misleading
    'pass example_inputs the model accepts'."""
    model = hook_llm(hf_model("segformer"))
    inputs = token_ids("segformer")
    expected = logits(model, inputs)
    assert not torch.equal(expected, logits(hf_model("segformer"), inputs))
    converted = hw.convert(model, inputs)
    assert torch.equal(logits(converted, inputs), expected)
    grown = (torch.randn(3, 3, 96, 96),)
    assert torch.equal(logits(converted, grown), logits(model, grown))


def test_hooks_registered_after_transformers_own_are_refused_with_the_reason():
    """A model called with output_hidden_states=True before the user's hooks were attached
    records hidden states before those hooks run; a converted (or loaded) model records them
    after. convert says so instead of returning a model that differs under that option."""
    model = hf_model("dinov2")
    inputs = token_ids("dinov2")
    outputs(model, inputs, output_hidden_states=True)
    hw.attach(model, hw.hooks.Scale(2.0), where=[f"encoder.layer.{i}" for i in range(3)])
    with pytest.raises(hw.UnconvertibleHookError) as info:
        hw.convert(model, inputs)
    text = str(info.value)
    assert "encoder.layer.0 [forward] Scale" in text and "registered before this hook" in text
    assert "output_hidden_states=True" in text
    converted = hw.convert(model, inputs, call_options=[])  # the caller accepts the difference
    assert torch.equal(outputs(converted, inputs).last_hidden_state, outputs(model, inputs).last_hidden_state)
