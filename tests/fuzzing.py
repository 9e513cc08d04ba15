"""Hypothesis strategies that mutate hookwrap files, and the property every case must keep.

The property: ``hw.load`` of a mutated file either succeeds or raises a ``HookwrapError``
subclass; nothing else escapes, no case takes more than 5 s (a watchdog ends the process
with every thread's traceback if one hangs, even inside native code), and no module that
was not imported before gets imported. Used by ``tests/test_fuzz.py`` (a few hundred cases in
``make test``) and ``benchmarks/bench_fuzz.py`` (thousands in ``make bench``).
"""

from __future__ import annotations

import faulthandler
import json
import struct
import sys
import time
from pathlib import Path

import torch
from helpers import small_cnn
from hypothesis import strategies as st

import hookwrap as hw
from hookwrap.io import manifest_digest

CASE_LIMIT_SECONDS = 5.0


def seed_file(folder: Path) -> Path:
    """A valid hookwrap file with a Chain wrapper and a CapturedHook that owns a constant."""
    model = small_cnn()
    model[0].register_forward_hook(lambda m, a, o: torch.clamp(o * 1.5, -2, 2))
    offset = torch.randn(4)
    model[5].register_forward_hook(lambda m, a, o: o * o.mean() + offset)
    path = folder / "seed.safetensors"
    hw.save(hw.convert(model, (torch.randn(2, 3, 10, 10),)), path)
    return path


def split(raw: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header: dict, data: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _set(root: object, path: tuple, value: object) -> object:
    if not path:
        return value
    node = root
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    return root


@st.composite
def mutated(draw: st.DrawFn, raw: bytes) -> tuple[str, bytes]:
    """A mutation of ``raw``: of header bytes, of the manifest's JSON (with a recomputed,
    valid digest, so the change reaches the deeper checks), or of the tensor section."""
    kind = draw(st.sampled_from(["header-bytes", "manifest", "manifest", "tensor-table", "data", "length"]))
    header, data = split(raw)
    n = struct.unpack("<Q", raw[:8])[0]
    if kind == "header-bytes":
        out = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(8, 8 + n - 1))
            out[pos] = draw(st.integers(0, 255))
        return kind, bytes(out)
    if kind == "length":
        return kind, struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + raw[8:]
    if kind == "manifest":
        meta = header["__metadata__"]
        manifest = json.loads(meta["hookwrap"])
        paths = _paths(manifest)
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from(paths))
            action = draw(st.sampled_from(["replace", "delete", "replace"]))
            if action == "delete" and path:
                parent = manifest
                for key in path[:-1]:
                    parent = parent[key]
                if isinstance(parent, dict):
                    parent.pop(path[-1], None)
                elif isinstance(parent, list) and path[-1] < len(parent):
                    parent.pop(path[-1])
                paths = _paths(manifest)
            else:
                try:
                    manifest = _set(manifest, path, draw(json_values))
                except (KeyError, IndexError, TypeError):
                    pass
                paths = _paths(manifest)
        text = json.dumps(manifest)
        meta["hookwrap"] = text
        meta["hookwrap.digest"] = manifest_digest(text)
        return kind, join(header, data)
    if kind == "tensor-table":
        keys = [k for k in header if k != "__metadata__"]
        key = draw(st.sampled_from(keys))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "name", "drop"]))
        if field == "dtype":
            header[key]["dtype"] = draw(st.sampled_from(["F32", "F16", "I64", "BOOL", "U8", "X9", ""]))
        elif field == "shape":
            header[key]["shape"] = draw(st.lists(st.integers(-2, 70), max_size=4))
        elif field == "data_offsets":
            header[key]["data_offsets"] = draw(st.lists(st.integers(-10, len(data) + 10), min_size=0, max_size=3))
        elif field == "name":
            header[draw(st.text(min_size=1, max_size=10))] = header.pop(key)
        else:
            header.pop(key)
        return kind, join(header, data)
    # data: flip, truncate or extend the tensor section
    action = draw(st.sampled_from(["flip", "truncate", "extend"]))
    if action == "flip" and data:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 16))):
            out[draw(st.integers(0, len(out) - 1))] ^= 1 << draw(st.integers(0, 7))
        data = bytes(out)
    elif action == "truncate":
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    else:
        data = data + draw(st.binary(min_size=1, max_size=64))
    return kind, raw[: 8 + n] + data


def check_case(path: Path, payload: bytes) -> str:
    """Write ``payload`` and load it; return "loaded" or "refused", or raise AssertionError."""
    path.write_bytes(payload)
    before = set(sys.modules)
    base = small_cnn()
    start = time.perf_counter()
    faulthandler.dump_traceback_later(2 * CASE_LIMIT_SECONDS, exit=True)  # a hang ends the run
    try:
        hw.load(path, base=base)
        outcome = "loaded"
    except hw.HookwrapError:
        outcome = "refused"
    finally:
        faulthandler.cancel_dump_traceback_later()
    elapsed = time.perf_counter() - start
    new = set(sys.modules) - before
    assert not new, f"loading imported new modules: {sorted(new)}"
    assert elapsed < CASE_LIMIT_SECONDS, f"a case took {elapsed:.1f} s"
    return outcome
