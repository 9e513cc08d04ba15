"""Hooks from the libraries people use (issue 24), each used the way its own docs show and
then taken through hookwrap's journey: steering-vectors, TransformerLens, and a model whose
``state_dict()`` hides what its wrappers own. (Quantization, parametrizations and PEFT's
input-grad hooks are rules of the registry: tests/test_registry.py.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import ROOT
from libmodels import hf_model, llm_behaviour, scaled_atol, tl_bridge, token_ids
from torch import nn

import hookwrap as hw

TESTS = str(ROOT / "tests")

LOADED = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    import hookwrap as hw
    from libmodels import hf_model, llm_behaviour
    model = hw.load({path!r}, base=lambda: hf_model({family!r}, seed=3))
    torch.save(llm_behaviour(model), {out!r})
""")


def steering_vector(seed: int = 0):
    from steering_vectors import SteeringVector

    gen = torch.Generator().manual_seed(seed)
    return SteeringVector({0: torch.randn(32, generator=gen), 1: torch.randn(32, generator=gen)}, "decoder_block")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_steering_vectors_hooks_convert_save_load_export_and_pass_parity(family, tmp_path):
    """steering-vectors writes ``original_tensor[None] = original_tensor + delta`` into the
    block's output: convert refused it (aten.copy off the allowlist)."""
    model = hf_model(family)
    plain = llm_behaviour(model)
    inputs = token_ids(family)
    with steering_vector().apply(model, multiplier=2.0):  # the library's own idiom
        expected = llm_behaviour(model)
        converted = hw.convert(model, inputs)
        hooked_logits = model(*inputs).logits.detach()
    assert not hw.inventory(model).where(kind="forward")  # apply() removed its hooks on exit
    assert all(not torch.equal(expected[k], plain[k]) for k in plain if k != "tokens")
    got = llm_behaviour(converted)
    assert all(torch.equal(got[k], v) for k, v in expected.items())

    path, out = tmp_path / "steered.safetensors", tmp_path / "loaded.pt"
    hw.save(converted, path)
    code = LOADED.format(tests=TESTS, path=str(path), family=family, out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    loaded = torch.load(out)
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())

    converted.config.use_cache = False  # no exporter flattens a KV cache (hw.export_onnx says so)
    result = hw.export_onnx(converted, inputs, tmp_path / "steered.onnx")
    report = hw.check_parity(converted, result.path, inputs, atol=scaled_atol(hooked_logits))
    assert report, report.summary()


def test_transformer_lens_permanent_hooks_and_in_place_ablation_convert_save_and_load(tmp_path):
    """TransformerLens' standard ablation changes its activation in place and returns None:
    convert refused it as modifying its args. Its bridge overrides state_dict(), so save
    wrote a file without the wrapper tensors, which load then refused."""
    bridge = tl_bridge()
    ids = token_ids("gpt2")[0]
    with torch.no_grad():
        plain = bridge(ids)

    def ablate_head(z, hook):
        z[:, :, 0] = 0.0

    offset = torch.randn(32, generator=torch.Generator().manual_seed(1))
    bridge.add_perma_hook("blocks.0.attn.hook_z", ablate_head)
    bridge.add_perma_hook("blocks.1.hook_out", lambda act, hook: act + offset)
    with torch.no_grad():
        expected = bridge(ids)
    assert not torch.equal(expected, plain)
    listed = {h.alias: h for h in hw.inventory(bridge).where(origin="transformer_lens", kind="forward")}
    ablation = listed["blocks.0.attn.hook_z / blocks.0.attn.o.hook_in"]  # the two names the bridge knows it by
    assert ablation.name.endswith("ablate_head") and ablation.plan == "capture"
    converted = hw.convert(bridge, (ids,))
    with torch.no_grad():
        assert torch.equal(converted(ids), expected)
    hw.save(converted, tmp_path / "tl.safetensors")
    loaded = hw.load(tmp_path / "tl.safetensors", base=lambda: tl_bridge(seed=3))
    with torch.no_grad():
        assert torch.equal(loaded(ids), expected)


def test_errors_name_the_hook_point_the_user_wrote():
    """Blockers named blocks.0._original_component.attn._original_component.o.hook_in; a
    TransformerLens user wrote blocks.0.attn.hook_z."""
    bridge = tl_bridge()
    seen = []

    def stateful(act, hook):
        seen.append(1)
        return act * len(seen)

    bridge.add_perma_hook("blocks.0.attn.hook_z", stateful)
    with pytest.raises(hw.UnconvertibleHookError) as info:
        hw.convert(bridge, token_ids("gpt2"))
    (blocker,) = info.value.blockers
    assert blocker.path == ("blocks.0.attn.hook_z / blocks.0.attn.o.hook_in "
                            "(module blocks.0._original_component.attn.o.hook_in)"), blocker.path
    assert blocker.name.endswith("stateful")


class HidesWrappers(nn.Module):
    """A model whose state_dict() leaves out what sits under a hookwrap wrapper list, as a
    library's own state_dict override can."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))

    def forward(self, x):
        return self.body(x)

    def state_dict(self, *args, **kwargs):
        full = super().state_dict(*args, **kwargs)
        return {k: v for k, v in full.items() if ".hookwrap_" not in k}


def test_save_proves_its_own_file_when_state_dict_hides_wrapper_tensors(tmp_path):
    torch.manual_seed(0)
    model = HidesWrappers().eval()
    offset = torch.randn(4)
    model.body[0].register_forward_hook(lambda m, a, o: o + offset)
    x = torch.randn(3, 4)
    converted = hw.convert(model, (x,))
    path = tmp_path / "hidden.safetensors"
    hw.save(converted, path)
    assert "body.0.hookwrap_post.0.c0" in hw.read_manifest(path)["tensors"]
    torch.manual_seed(5)
    loaded = hw.load(path, base=HidesWrappers().eval())
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
