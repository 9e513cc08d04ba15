"""Crafting hookwrap files as an attacker would: a valid file, then a rewrite of its
manifest or tensors with every digest recomputed, so the change reaches the deeper checks."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import torch
from helpers import small_cnn
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import hookwrap as hw
from hookwrap.io import manifest_digest, tensor_digest

__all__ = ["hooked_small", "rewrite", "edit_header", "gib_file", "refuse_in_child"]


def hooked_small(tmp_path):
    model = small_cnn()
    model[0].register_forward_hook(lambda m, a, o: torch.clamp(o * 1.5, -2, 2))
    offset = torch.randn(4)
    model[5].register_forward_hook(lambda m, a, o: o * o.mean() + offset)
    path = tmp_path / "good.safetensors"
    converted = hw.convert(model, (torch.randn(2, 3, 10, 10),))
    hw.save(converted, path)
    return path


def rewrite(src: Path, dst: Path, *, manifest_fn=None, tensors_fn=None, marker=None):
    tensors = load_file(src)
    with safe_open(src, "pt") as fh:
        meta = dict(fh.metadata())
    manifest = json.loads(meta["hookwrap"])
    if tensors_fn:
        tensors_fn(tensors, manifest)
        # a careful attacker recomputes the tensor digests too
        manifest["digests"]["tensors"] = {k: tensor_digest(v.contiguous()) for k, v in tensors.items()}
    if manifest_fn:
        manifest_fn(manifest)
    meta["hookwrap"] = json.dumps(manifest)
    meta["hookwrap.digest"] = manifest_digest(meta["hookwrap"])  # a careful attacker recomputes it
    if marker is not None:
        meta["hookwrap.format"] = marker
    save_file(tensors, dst, metadata=meta)
    return dst


def edit_header(src: Path, dst: Path, fn) -> Path:
    """Rewrite the raw JSON header text with ``fn(text) -> text`` (keeping the tensors),
    for attacks that a JSON round trip would normalise away."""
    import struct

    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    text = fn(raw[8:8 + n].decode("utf-8")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    dst.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return dst


MEMORY_CASE = textwrap.dedent("""
    import resource, sys, torch
    from torch import nn
    import hookwrap as hw
    path = {path!r}
    base = lambda: nn.Sequential(nn.Linear(4, 4))
    hw.load({good!r}, base=base)  # warm up every import before measuring
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        hw.load(path, base=base)
        print("loaded")
    except hw.ManifestError as exc:
        print("refused", exc.key)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) / 1024)
""")


def gib_file(tmp_path) -> Path:
    """A ~2 KB file whose CapturedHook declares a 1 GiB constant."""
    model = nn.Sequential(nn.Linear(4, 4)).eval()
    offset = torch.randn(4)
    model[0].register_forward_hook(lambda m, a, o: o * o.mean() + offset)
    good = tmp_path / "small.safetensors"
    hw.save(hw.convert(model, (torch.randn(2, 4),)), good)

    def declare(manifest):
        manifest["wrappers"]["0"]["post"][0]["config"]["constants"]["c0"]["shape"] = [1 << 28]

    return rewrite(good, tmp_path / "gib.safetensors", manifest_fn=declare)


def refuse_in_child(path: Path) -> tuple[str, float]:
    """Load ``path`` in a fresh process (after loading its good twin to warm up imports);
    return the outcome and the growth of peak RSS in MB while it was being refused."""
    import subprocess
    import sys

    code = MEMORY_CASE.format(path=str(path), good=str(path.parent / "small.safetensors"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(proc.stderr)
    lines = proc.stdout.split("\n")
    return lines[0], float(lines[1])
