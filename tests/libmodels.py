"""Models from timm and Hugging Face transformers, built from configs (no downloads), with
the hooks their users attach. Shared by tests/test_timm.py, tests/test_transformers.py and
the sweeps in benchmarks/ (bench_timm.py, bench_transformers.py)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["timm_model", "hf_model", "HF_FAMILIES", "VISION", "blocks_of", "steer", "hidden_pre_hook", "hook_llm",
           "token_ids", "scaled_atol", "attention_out", "head_ablation", "steer_last", "llm_hooks", "greedy",
           "llm_behaviour", "LENGTHS"]


def timm_model(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)`` under a fixed seed, in eval mode."""
    import timm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        return timm.create_model(name, pretrained=False, **kwargs).eval()


# family -> (config class, model class, tiny config). Hidden size 32, 2 layers, vocabulary 128.
_TINY = dict(vocab_size=128, bos_token_id=0, eos_token_id=1, pad_token_id=0)
HF_FAMILIES: dict[str, tuple[str, str, dict]] = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=32, n_layer=2, n_head=2, n_positions=64)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                     num_attention_heads=2, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                     num_attention_heads=2, num_key_value_heads=2)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(hidden_size=32, intermediate_size=64,
                                                           num_hidden_layers=2, num_attention_heads=2,
                                                           num_key_value_heads=2)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(hidden_size=32, intermediate_size=64,
                                                            num_hidden_layers=2, num_attention_heads=2)),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                               num_attention_heads=2, word_embed_proj_dim=32,
                                               max_position_embeddings=64)),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=2)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                     num_attention_heads=2, num_key_value_heads=2, head_dim=16)),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(hidden_size=32, num_hidden_layers=2,
                                                        num_attention_heads=2)),
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(hidden_size=32, n_layer=2, n_head=2)),
    "bert": ("BertConfig", "BertForMaskedLM", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                  num_attention_heads=2, max_position_embeddings=64)),
    "vit": ("ViTConfig", "ViTForImageClassification", dict(hidden_size=32, intermediate_size=64,
                                                          num_hidden_layers=2, num_attention_heads=2,
                                                          image_size=32, patch_size=8, num_labels=10)),
    # Vision models whose hidden states transformers collects with forward hooks (issue 22).
    "dinov2": ("Dinov2Config", "Dinov2Model", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                  num_attention_heads=2, image_size=32, patch_size=8)),
    "clip_vision": ("CLIPVisionConfig", "CLIPVisionModel", dict(hidden_size=32, intermediate_size=64,
                                                               num_hidden_layers=3, num_attention_heads=2,
                                                               image_size=32, patch_size=8)),
    "segformer": ("SegformerConfig", "SegformerForSemanticSegmentation", dict(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
        decoder_hidden_size=32, num_labels=3, mlp_ratios=[2, 2], patch_sizes=[7, 3], strides=[4, 2])),
}
VISION = ("vit", "dinov2", "clip_vision", "segformer")
DECODERS = ("gpt2", "llama", "qwen2", "mistral", "gpt_neox", "opt", "phi", "gemma", "falcon", "bloom")


def hf_model(family: str, seed: int = 0, **overrides) -> nn.Module:
    """A tiny Hugging Face model of ``family`` with the library's default settings
    (``use_cache=True`` included), random weights under ``seed``, in eval mode."""
    import transformers

    transformers.logging.set_verbosity_error()
    config_name, model_name, tiny = HF_FAMILIES[family]
    extra = {} if family in VISION else _TINY
    config = getattr(transformers, config_name)(**{**extra, **tiny, **overrides})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        return getattr(transformers, model_name)(config).eval()


def token_ids(family: str, batch: int = 2, length: int = 8, seed: int = 0) -> tuple:
    """Example inputs: token ids, or pixels for the vision families (64 x 64 for Segformer,
    whose strides need it, else 32 x 32)."""
    gen = torch.Generator().manual_seed(seed)
    if family in VISION:
        side = 64 if family == "segformer" else 32
        return (torch.randn(batch, 3, side, side, generator=gen),)
    return (torch.randint(2, 128, (batch, length), generator=gen),)


def blocks_of(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the ModuleList holding the most parameters."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def steer(vector: torch.Tensor, alpha: float = 2.0) -> Callable:
    """The LLM steering vector: a closure adding ``alpha * vector`` to the hidden states a
    block returns (a tensor, or the first item of a tuple)."""

    def hook(module: nn.Module, args: tuple, output):
        if isinstance(output, tuple):
            return (output[0] + alpha * vector, *output[1:])
        return output + alpha * vector

    return hook


def steer_by(gain: float) -> Callable:
    """A closure multiplying the hidden states a block returns by ``gain``."""

    def amplify(module: nn.Module, args: tuple, output):
        if isinstance(output, tuple):
            return (output[0] * gain, *output[1:])
        return output * gain

    return amplify


def hidden_pre_hook(module: nn.Module, args: tuple, kwargs: dict):
    """A ``with_kwargs=True`` pre-hook that scales the hidden states coming into a block,
    wherever the library passes them (first positional argument or ``hidden_states=``)."""
    if args and isinstance(args[0], torch.Tensor):
        return (args[0] * 0.9, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": kwargs["hidden_states"] * 0.9}


def hook_llm(model: nn.Module, seed: int = 0) -> nn.Module:
    """The hooks of the issue: a steering closure on every block, a keyword pre-hook on the
    first block, and ``Scale`` on every ``nn.Linear``. Models whose blocks change width (the
    Segformer pyramid) get a closure that amplifies each block's output instead of a vector."""
    import hookwrap as hw

    blocks = blocks_of(model)
    hidden = getattr(model.config, "hidden_size", None)
    gen = torch.Generator().manual_seed(seed)
    if isinstance(hidden, int):
        vector = torch.randn(hidden, generator=gen)
        for block in blocks:
            block.register_forward_hook(steer(vector))
    else:
        gain = 1.0 + torch.rand(1, generator=gen).item()
        for block in blocks:
            block.register_forward_hook(steer_by(gain))
    blocks[0].register_forward_pre_hook(hidden_pre_hook, with_kwargs=True)
    hw.attach(model, hw.hooks.Scale(0.9), where=nn.Linear)
    return model


def scaled_atol(reference: torch.Tensor, fraction: float = 1e-4) -> float:
    """An absolute tolerance relative to the outputs' size, so that a check on a randomly
    initialised model whose outputs are tiny still tells right from wrong."""
    top = float(reference.abs().max())
    assert top > 0, "the model's outputs are all zero: a check on them could not fail"
    return fraction * top


# Hooks of the LLM users of issue 22, at the modules they hook. ``head_ablation`` is the
# interpretability pre-hook on the attention output projection; the others sit on blocks.
def attention_out(model: nn.Module) -> list[nn.Module]:
    """The attention output projections (Llama ``o_proj``, GPT-2 ``c_proj``)."""
    return [m for path, m in model.named_modules() if path.endswith(("self_attn.o_proj", "attn.c_proj"))]


def head_ablation(heads: int, head_dim: int, head: int = 0) -> Callable:
    """Zero one attention head before the output projection, reading the sequence length
    from the activation: ``z.view(b, s, heads, head_dim) * mask``."""
    mask = torch.ones(1, 1, heads, 1)
    mask[..., head, :] = 0

    def ablate(module: nn.Module, args: tuple):
        z = args[0]
        b, s, _ = z.shape
        z = z.view(b, s, heads, head_dim) * mask
        return (z.reshape(b, s, heads * head_dim),)

    return ablate


def steer_last(vector: torch.Tensor, alpha: float = 4.0) -> Callable:
    """Steer only the last position of the hidden states a block returns, reading
    ``out.shape[1]``."""

    def hook(module: nn.Module, args: tuple, output):
        hidden = output[0] if isinstance(output, tuple) else output
        last = hidden.shape[1] - 1
        steered = torch.cat([hidden[:, :last], hidden[:, last:] + alpha * vector], dim=1)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    return hook


def llm_hooks(model: nn.Module, which: str, seed: int = 0) -> nn.Module:
    """Attach one of issue 22's hooks to every layer: ``ablate`` (head ablation pre-hook),
    ``steer`` (additive steering vector) or ``steer_last`` (last position only)."""
    hidden = model.config.hidden_size
    heads = model.config.num_attention_heads
    gen = torch.Generator().manual_seed(seed)
    vector = torch.randn(hidden, generator=gen)
    if which == "ablate":
        for proj in attention_out(model):
            proj.register_forward_pre_hook(head_ablation(heads, hidden // heads))
    elif which == "steer":
        for block in blocks_of(model):
            block.register_forward_hook(steer(vector))
    elif which == "steer_last":
        for block in blocks_of(model):
            block.register_forward_hook(steer_last(vector))
    else:
        raise ValueError(which)
    return model


def greedy(model: nn.Module, ids: torch.Tensor, tokens: int = 8):
    """Greedy generation with the KV cache: the tokens and every step's scores."""
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                             min_new_tokens=tokens, do_sample=False, use_cache=True, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=model.config.pad_token_id)
    return out.sequences, torch.stack(out.scores)


LENGTHS = ((1, 1), (2, 8), (2, 11), (2, 30))


def llm_behaviour(model: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """What a steered LLM must keep after conversion and loading: the logits at sequence
    lengths 1, 8, 11 and 30 (batch 1 at length 1), and greedy generation of 8 tokens."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for batch, length in LENGTHS:
            out[f"logits {batch}x{length}"] = model(torch.randint(2, 128, (batch, length), generator=gen)).logits
    out["tokens"], out["scores"] = greedy(model, torch.randint(2, 128, (2, 5), generator=gen))
    return out


def tiny_tokenizer():
    """A word-level tokenizer over the tiny models' 128 ids (t0 ... t127), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(128)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0", eos_token="t1",
                                   bos_token="t0", add_bos_token=True, name_or_path="tiny")


def tl_bridge(family: str = "gpt2", seed: int = 0) -> nn.Module:
    """A TransformerLens ``TransformerBridge`` around a tiny Hugging Face model, offline."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(family, hf_model=hf_model(family, seed=seed),
                                                    tokenizer=tiny_tokenizer())
    return bridge.eval()
