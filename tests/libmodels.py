"""Models from timm and Hugging Face transformers, built from configs (no downloads), with
the hooks their users attach. Shared by tests/test_timm.py, tests/test_transformers.py and
the sweeps in benchmarks/ (bench_timm.py, bench_transformers.py)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["timm_model", "hf_model", "HF_FAMILIES", "blocks_of", "steer", "hidden_pre_hook", "hook_llm",
           "token_ids", "scaled_atol"]


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
}
DECODERS = ("gpt2", "llama", "qwen2", "mistral", "gpt_neox", "opt", "phi", "gemma", "falcon", "bloom")


def hf_model(family: str, seed: int = 0, **overrides) -> nn.Module:
    """A tiny Hugging Face model of ``family`` with the library's default settings
    (``use_cache=True`` included), random weights under ``seed``, in eval mode."""
    import transformers

    transformers.logging.set_verbosity_error()
    config_name, model_name, tiny = HF_FAMILIES[family]
    extra = {} if family == "vit" else _TINY
    config = getattr(transformers, config_name)(**{**extra, **tiny, **overrides})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        return getattr(transformers, model_name)(config).eval()


def token_ids(family: str, batch: int = 2, length: int = 8, seed: int = 0) -> tuple:
    """Example inputs: token ids, or pixels for ViT."""
    gen = torch.Generator().manual_seed(seed)
    if family == "vit":
        return (torch.randn(batch, 3, 32, 32, generator=gen),)
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


def hidden_pre_hook(module: nn.Module, args: tuple, kwargs: dict):
    """A ``with_kwargs=True`` pre-hook that scales the hidden states coming into a block,
    wherever the library passes them (first positional argument or ``hidden_states=``)."""
    if args and isinstance(args[0], torch.Tensor):
        return (args[0] * 0.9, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": kwargs["hidden_states"] * 0.9}


def hook_llm(model: nn.Module, seed: int = 0) -> nn.Module:
    """The hooks of the issue: a steering closure on every block, a keyword pre-hook on the
    first block, and ``Scale`` on every ``nn.Linear``."""
    import hookwrap as hw

    blocks = blocks_of(model)
    width = next(p for p in blocks[0].parameters() if p.dim() >= 1).shape[-1]
    hidden = getattr(model.config, "hidden_size", width)
    gen = torch.Generator().manual_seed(seed)
    vector = torch.randn(hidden, generator=gen)
    for block in blocks:
        block.register_forward_hook(steer(vector))
    blocks[0].register_forward_pre_hook(hidden_pre_hook, with_kwargs=True)
    hw.attach(model, hw.hooks.Scale(0.9), where=nn.Linear)
    return model


def scaled_atol(reference: torch.Tensor, fraction: float = 1e-4) -> float:
    """An absolute tolerance relative to the outputs' size, so that a check on a randomly
    initialised model whose outputs are tiny still tells right from wrong."""
    top = float(reference.abs().max())
    assert top > 0, "the model's outputs are all zero: a check on them could not fail"
    return fraction * top
