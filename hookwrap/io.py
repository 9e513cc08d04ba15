"""Save and load converted models: one ``.safetensors`` file, no pickle.

File layout: an ordinary safetensors file whose tensors are the model's ``state_dict``
(tied tensors stored once, as ``safetensors.torch.save_model`` does) and whose header
metadata holds:

* ``"hookwrap"``: the manifest, JSON (schema below);
* ``"hookwrap.format"``: the manifest's format version again, as a marker, so a damaged
  manifest key is never mistaken for a plain file;
* ``"hookwrap.digest"``: the sha256 of the manifest text, so any change to it is caught;
* ``"format": "pt"`` and any user ``metadata``.

The manifest's ``digests`` hold a BLAKE3 digest of every tensor's bytes: ``load`` checks
them with ``verify=True``, and :func:`verify` checks them without loading a model. Every
header byte is covered by default: the manifest by its digest, the tensor table and the
user metadata by their copies in the manifest.

hookwrap reserves the tensor-key prefix ``__hookwrap__.`` and currently writes no tensors
under it: captured graphs are JSON inside the manifest, and their constants are ordinary
``state_dict`` tensors of their ``CapturedHook`` (``<host>.hookwrap_post.<i>.c<j>``).

Manifest schema (``format_version`` 3; versions 1, without ``digests``, and 2, whose
captured graphs carry no ``input_dims`` and keep only the batch dimension symbolic, are
still read)::

    {"format": "hookwrap", "format_version": 3,
     "hookwrap_version": "0.1.0", "torch_version": "2.14.1", "model": "VGG",
     "wrappers": {"features.0": {"module": "Conv2d",
                                 "pre": [], "post": [{"type": "Dropout2d", "config": {...}}]}},
     "tensors": {"features.0.weight": ["F32", [64, 3, 3, 3]], ...},
     "digests": {"algorithm": "blake3", "tensors": {"features.0.weight": "<64 hex digits>", ...}},
     "aliases": {"tied.name": "kept.name"},
     "metadata": {"format": "pt", ...the other header metadata, as a check...},
     "converted": [Action, ...], "baked": [Action, ...], "stripped": [Action, ...],
     "kept": [Action, ...]}

A wrapper ``type`` is looked up in hookwrap's registry (and converters registered in
the running process); nothing named by a file is ever imported or executed.

Limits (a file over them is refused before anything is built): header
:data:`MAX_HEADER` bytes, :data:`MAX_WRAPPERS` wrappers in all (``Chain`` items
included), ``Chain`` nesting :data:`hookwrap.wrappers.MAX_CHAIN_DEPTH`, captured graphs
:data:`hookwrap._graph.MAX_NODES` nodes, tree specs :data:`hookwrap._tree.MAX_DEPTH`
levels.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import re
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from . import wrappers as W
from ._fs import atomic_path, fd_path, file_errors, open_regular
from ._graph_check import budget_for
from ._txn import transaction
from ._version import __version__
from .errors import HookwrapError, InvalidArgumentError, ManifestError
from .inventory import GLOBAL_PATH, forward_hooks
from .report import Action, ConversionReport, attach_report, conversion_report

__all__ = ["save", "load", "load_weights", "read_manifest", "verify", "VerifyResult", "manifest_digest",
           "tensor_digest", "FORMAT_VERSION", "MANIFEST_KEY"]

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MANIFEST_KEY = "hookwrap"
MARKER_KEY = "hookwrap.format"
DIGEST_KEY = "hookwrap.digest"
DIGEST_ALGORITHM = "blake3"
RESERVED_PREFIX = "__hookwrap__."
MAX_HEADER = 100 * 1024 * 1024
MAX_WRAPPERS = 100_000
# A module path as torch.nn.Module.add_module allows its parts: any non-empty name without
# a dot (torchvision's RegNet has "block1-0"); control characters are refused.
_PATH = re.compile(r"^(?:[^.\x00-\x1f\x7f]+(?:\.[^.\x00-\x1f\x7f]+)*)?$")

_DTYPES = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4),
    "I16": (torch.int16, 2), "I8": (torch.int8, 1), "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
    "U16": (getattr(torch, "uint16", None), 2), "U32": (getattr(torch, "uint32", None), 4),
    "U64": (getattr(torch, "uint64", None), 8), "C64": (torch.complex64, 8),
    "F8_E4M3": (getattr(torch, "float8_e4m3fn", None), 1), "F8_E5M2": (getattr(torch, "float8_e5m2", None), 1),
}
_DTYPE_NAMES = {dtype: name for name, (dtype, _) in _DTYPES.items() if dtype is not None}


def manifest_digest(text: str) -> str:
    """The ``hookwrap.digest`` of a manifest text: its sha256, hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().reshape(-1)
    if not flat.is_contiguous():  # pragma: no cover - reshape(-1) of a contiguous tensor is
        flat = flat.contiguous()
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")  # type: ignore[arg-type]


def tensor_digest(tensor: torch.Tensor) -> str:
    """The BLAKE3 digest (hex) of a contiguous CPU tensor's bytes, as the file stores them."""
    import blake3

    data = _tensor_bytes(tensor)
    threads = blake3.blake3.AUTO if data.nbytes >= (8 << 20) else 1
    return blake3.blake3(data, max_threads=threads).hexdigest()


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _no_surrogates(value: Any, name: str, key: str) -> None:
    """Refuse strings that cannot be encoded (lone surrogates from JSON escapes)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError(f"{name}: {key} holds text that is not valid Unicode (a lone surrogate)",
                            key=key) from None


def _json(text: str | bytes, name: str, key: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError, UnicodeError) as exc:  # also huge integers, deep nesting
        pos = getattr(exc, "pos", None)
        where = f" at byte {pos}" if isinstance(pos, int) else ""
        raise ManifestError(f"{name}: {key} is not valid JSON{where} ({type(exc).__name__}: "
                            f"{str(exc)[:200]}); the file is corrupt", key=key) from None


# --------------------------------------------------------------------------------------
# Reading and checking the header
# --------------------------------------------------------------------------------------


@dataclass
class _Header:
    path: Path
    handle: BinaryIO = field(repr=False)
    tensors: dict[str, tuple[str, list[int]]]
    metadata: dict[str, str]
    manifest: dict[str, Any] | None
    spans: dict[str, tuple[int, int]] = field(repr=False)  # each tensor's absolute byte range
    size: int  # the file's size when its header was checked

    @property
    def name(self) -> str:
        return self.path.name


_ENTRY = re.compile(rb'"((?:[^"\\])*)":\{')


def _entry_at(raw: bytes, pos: int) -> str | None:
    """The top-level header entry whose text contains byte ``pos`` (for error messages)."""
    found = None
    for match in _ENTRY.finditer(raw, 0, max(pos, 0) + 1):
        found = match.group(1).decode("utf-8", "replace")
    return found


@contextlib.contextmanager
def _opened(path: str | os.PathLike[str]) -> Iterator[_Header]:
    """Open a hookwrap or safetensors file (regular files only), parse and check its header
    completely before anything is loaded, and keep it open for reading the tensors."""
    handle = open_regular(path, what="safetensors file")
    try:
        try:
            header = _read_header(Path(path), handle)
        except HookwrapError:
            raise
        except Exception as exc:  # whatever a hostile header provokes, it is a ManifestError
            raise ManifestError(f"{Path(path).name}: the header cannot be read ({type(exc).__name__}: "
                                f"{str(exc)[:200]})", key="header") from None
        yield header
    finally:
        handle.close()


def _read_header(p: Path, fh: BinaryIO) -> _Header:
    name = p.name
    with file_errors(p, "read the safetensors file"):
        size = os.fstat(fh.fileno()).st_size
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise ManifestError(f"{name}: file is {size} bytes, too short for a safetensors header", key="header")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER or 8 + n > size:
            raise ManifestError(
                f"{name}: header claims {n} bytes but the file has {size - 8} after the length: "
                f"the file is truncated or its header is corrupt", key="header")
        raw = fh.read(n)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        entry = _entry_at(raw, exc.start)
        where = f" inside entry {entry!r}" if entry else ""
        raise ManifestError(f"{name}: header is not valid UTF-8 at byte {exc.start}{where}; the file is corrupt",
                            key=entry or "header") from None
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:
        pos = getattr(exc, "pos", None) or 0
        entry = _entry_at(raw, len(text[:pos].encode("utf-8")))
        where = f" inside entry {entry!r}" if entry else ""
        raise ManifestError(
            f"{name}: header is not valid JSON at byte {pos}{where} ({type(exc).__name__}); the file is corrupt",
            key=entry or "header") from None
    if not isinstance(header, dict):
        raise ManifestError(f"{name}: header must be a JSON object", key="header")
    if _SURROGATE_ESCAPE.search(raw):  # valid UTF-8 cannot hold a surrogate; only an escape can
        _no_surrogates(header, name, "header")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ManifestError(f"{name}: header '__metadata__' must map strings to strings", key="__metadata__")
    data_len = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    tensors: dict[str, tuple[str, list[int]]] = {}
    for key, entry in header.items():
        dtype, shape, begin, end = _tensor_entry(name, key, entry)
        spans.append((begin, end, key))
        tensors[key] = (dtype, shape)
    spans.sort()
    cut = next(((b, e, k) for b, e, k in spans if e > data_len), None)
    if cut is not None:
        raise ManifestError(
            f"{name}: tensor {cut[2]!r} ends at byte {cut[1]} of the data section, which has only {data_len} "
            f"bytes: the file is truncated", key=cut[2])
    cursor = 0
    for begin, end, key in spans:
        if begin != cursor:
            raise ManifestError(
                f"{name}: tensor {key!r} starts at byte {begin}, expected {cursor}: the header is corrupt", key=key)
        cursor = end
    if cursor != data_len:
        raise ManifestError(
            f"{name}: the data section has {data_len} bytes but the tensors cover {cursor}: "
            f"the file is truncated or has trailing bytes", key="header")
    manifest = _parse_manifest(name, meta, tensors)
    start = 8 + n
    return _Header(p, fh, tensors, meta, manifest, {k: (start + b, start + e) for b, e, k in spans}, size)


def _tensor_entry(name: str, key: str, entry: Any) -> tuple[str, list[int], int, int]:
    """``(dtype, shape, begin, end)`` of one header entry, every part checked: a known dtype,
    at most 64 sizes that do not multiply past 2**62 (a size of 0 among them or not: torch
    computes strides from the others), and a byte range as long as the shape needs."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ManifestError(f"{name}: header entry {key!r} is not a tensor description", key=key)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _DTYPES:
        raise ManifestError(f"{name}: tensor {key!r} has unknown dtype {dtype!r}", key=key)
    if not isinstance(shape, list) or len(shape) > 64 or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**62 for s in shape):
        raise ManifestError(f"{name}: tensor {key!r} has a malformed shape {str(shape)[:80]}", key=key)
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise ManifestError(f"{name}: tensor {key!r} has malformed data_offsets {str(offsets)[:80]}", key=key)
    begin, end = offsets
    numel, nonzero = 1, 1
    for s in shape:
        numel *= s
        nonzero *= max(s, 1)
    if nonzero * _DTYPES[dtype][1] >= 2**62:
        raise ManifestError(f"{name}: tensor {key!r} has a shape {str(shape)[:80]} whose sizes multiply past "
                            f"2**62", key=key)
    if not 0 <= begin <= end or end - begin != numel * _DTYPES[dtype][1]:
        raise ManifestError(
            f"{name}: tensor {key!r} spans bytes {begin}..{end} but {dtype}{shape} needs "
            f"{numel * _DTYPES[dtype][1]}", key=key)
    return dtype, shape, begin, end


def _parse_manifest(name: str, meta: dict[str, str], tensors: dict[str, tuple[str, list[int]]]) -> dict[str, Any] | None:
    present = [k for k in (MANIFEST_KEY, MARKER_KEY, DIGEST_KEY) if k in meta]
    if not present:
        return None
    if len(present) != 3:
        missing = next(k for k in (MANIFEST_KEY, MARKER_KEY, DIGEST_KEY) if k not in meta)
        raise ManifestError(f"{name}: metadata key {missing!r} is missing: the hookwrap header is damaged", key=missing)
    if manifest_digest(meta[MANIFEST_KEY]) != meta[DIGEST_KEY]:
        raise ManifestError(
            f"{name}: metadata key 'hookwrap' fails its digest check ('hookwrap.digest'): the manifest "
            f"was altered or corrupted", key=MANIFEST_KEY)
    manifest = _json(meta[MANIFEST_KEY], name, "metadata key 'hookwrap'")
    if not isinstance(manifest, dict):
        raise ManifestError(f"{name}: metadata key 'hookwrap' must hold a JSON object", key=MANIFEST_KEY)
    version = manifest.get("format_version")
    if meta[MARKER_KEY] != str(version) or manifest.get("format") != "hookwrap":
        raise ManifestError(
            f"{name}: metadata keys 'hookwrap' and 'hookwrap.format' disagree: the header is damaged", key=MARKER_KEY)
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise ManifestError(
            f"{name}: manifest format_version {str(version)[:20]} is not supported by hookwrap {__version__} "
            f"(it reads versions {', '.join(map(str, READABLE_VERSIONS))}); use the hookwrap that wrote the file",
            key="format_version")
    for field_name in ("wrappers", "tensors", "aliases"):
        if not isinstance(manifest.get(field_name), dict):
            raise ManifestError(f"{name}: manifest field {field_name!r} must be an object", key=field_name)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in manifest["aliases"].items()):
        raise ManifestError(f"{name}: manifest field 'aliases' must map names to names", key="aliases")
    user = {k: v for k, v in meta.items() if k not in (MANIFEST_KEY, MARKER_KEY, DIGEST_KEY)}
    recorded = manifest.get("metadata")
    if not isinstance(recorded, dict) or recorded != user:
        recorded = recorded if isinstance(recorded, dict) else {}
        diff = sorted(set(user) ^ set(recorded) | {k for k in user if k in recorded and user[k] != recorded[k]})
        raise ManifestError(
            f"{name}: header metadata {diff} differs from the copy in the manifest: the header is corrupt",
            key=diff[0] if diff else "metadata")
    manifest["_actions"] = _actions(name, manifest)
    table = manifest["tensors"]
    for key in tensors:
        if key not in table:
            lost = sorted(k for k in table if k not in tensors)
            also = f" (the manifest lists {lost[0]!r}, which the file lacks)" if lost else ""
            raise ManifestError(f"{name}: tensor {key!r} is in the file but not in its manifest{also}", key=key)
        want = table[key]
        if not isinstance(want, list) or want != [tensors[key][0], tensors[key][1]]:
            raise ManifestError(
                f"{name}: tensor {key!r} is {tensors[key][0]}{tensors[key][1]} in the header but "
                f"{str(want)[:80]} in the manifest: the header is corrupt", key=key)
    for key in table:
        if key not in tensors:
            raise ManifestError(f"{name}: tensor {key!r} is listed in the manifest but missing from the file", key=key)
    manifest["_digests"] = _digests(name, manifest, tensors) if version >= 2 else None
    _check_wrapper_specs(name, manifest["wrappers"], tensors)
    return manifest


def _digests(name: str, manifest: dict[str, Any], tensors: dict[str, Any]) -> dict[str, str]:
    section = manifest.get("digests")
    if not isinstance(section, dict) or set(section) != {"algorithm", "tensors"} \
            or section["algorithm"] != DIGEST_ALGORITHM or not isinstance(section["tensors"], dict):
        raise ManifestError(f"{name}: manifest field 'digests' must be {{algorithm: {DIGEST_ALGORITHM!r}, "
                            f"tensors: {{...}}}}", key="digests")
    digests = section["tensors"]
    for key in tensors:
        value = digests.get(key)
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ManifestError(f"{name}: tensor {key!r} has no valid digest in the manifest", key=key)
    extra = sorted(set(digests) - set(tensors))
    if extra:
        raise ManifestError(f"{name}: the manifest has a digest for {extra[0]!r}, which the file lacks", key=extra[0])
    return digests


def _check_wrapper_specs(name: str, wrappers: dict[str, Any], tensors: dict[str, tuple[str, list[int]]]) -> None:
    """Check every wrapper entry's shape, the wrapper count, and every tensor a wrapper
    declares against the file, before anything is built or allocated."""
    count = 0
    for path, entry in wrappers.items():
        if not _PATH.match(path) or len(path) > 1000:
            raise ManifestError(f"{name}: wrapper entry {path[:80]!r} is not a module path", key=path[:80])
        if not isinstance(entry, dict) or set(entry) != {"module", "pre", "post"} or not isinstance(entry["module"], str) \
                or not isinstance(entry["pre"], list) or not isinstance(entry["post"], list):
            raise ManifestError(f"{name}: wrapper entry for {path!r} is malformed", key=path)
        for side in ("pre", "post"):
            for i, spec in enumerate(entry[side]):
                where = f"{path}.{W.PRE if side == 'pre' else W.POST}.{i}" if path else f"{W.PRE if side == 'pre' else W.POST}.{i}"
                try:
                    count += W.count_wrappers(spec)
                    declared = W.declared_tensors(spec)
                except InvalidArgumentError as exc:
                    raise ManifestError(f"{name}: wrapper {where}: {exc}", key=where) from None
                if count > MAX_WRAPPERS:
                    raise ManifestError(f"{name}: the file declares more than {MAX_WRAPPERS} wrappers", key=where)
                for sub, (dtype, shape) in declared.items():
                    key = f"{where}.{sub}"
                    found = tensors.get(key)
                    if found is None or found[0] != _DTYPE_NAMES.get(dtype) or found[1] != shape:
                        have = "nothing" if found is None else f"{found[0]}{found[1]}"
                        raise ManifestError(
                            f"{name}: wrapper {where} declares tensor {key!r} as {dtype}{shape}, but the file "
                            f"holds {have}", key=key)


_ACTION_FIELDS = {"path", "kind", "name", "origin", "action", "detail", "wrapper", "position"}


def _actions(name: str, manifest: dict[str, Any]) -> list[Action]:
    actions = []
    for part in ("converted", "baked", "stripped", "kept"):
        items = manifest.get(part, [])
        if not isinstance(items, list):
            raise ManifestError(f"{name}: manifest field {part!r} must be a list", key=part)
        for item in items:
            if (not isinstance(item, dict) or set(item) != _ACTION_FIELDS
                    or not all(v is None or isinstance(v, str) for v in item.values())
                    or item["action"] != part):
                raise ManifestError(f"{name}: manifest field {part!r} holds a malformed entry", key=part)
            actions.append(Action(**item))
    return actions


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The hookwrap manifest of a file, checked (see this module's docstring for the schema).

    Raises:
        ManifestError: the file is not a hookwrap file, or it is broken.
        HookwrapError: the file cannot be opened, or is not a regular file.

    Example:
        >>> hw.read_manifest("m.safetensors")["wrappers"]["features.0"]["post"]
        [{'type': 'Dropout2d', 'config': {'p': 0.2, 'always': True}}]
    """
    with _opened(path) as header:
        if header.manifest is None:
            raise ManifestError(
                f"{header.name}: a plain safetensors file with no hookwrap manifest "
                f"(hw.load still loads it as weights)", key=MANIFEST_KEY)
        return {k: v for k, v in header.manifest.items() if not k.startswith("_")}


@dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify` checked: every tensor's bytes against its recorded digest."""

    path: str
    tensors: int
    bytes: int
    algorithm: str
    seconds: float

    def __bool__(self) -> bool:
        return True

    def summary(self) -> str:
        return (f"{Path(self.path).name}: intact ({self.tensors} tensors, {self.bytes / 1e6:.1f} MB, "
                f"{self.algorithm} digests match)")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "intact": True, "tensors": self.tensors, "bytes": self.bytes,
                "algorithm": self.algorithm, "seconds": round(self.seconds, 3)}

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            from ._fs import atomic_write_text

            atomic_write_text(path, text + "\n")
        return text


def verify(path: str | os.PathLike[str]) -> VerifyResult:
    """Check that a hookwrap file is intact: its header (as ``load`` always does) and every
    tensor's bytes against the BLAKE3 digest that ``save`` recorded. No model is built.

    Returns:
        A :class:`VerifyResult` (truthy).

    Raises:
        ManifestError: the file was changed or is damaged; ``key`` names the tensor (or
            header entry) at fault.
        InvalidArgumentError: the file has no digests to check (a plain safetensors file, or
            one written by hookwrap before format version 2).
        HookwrapError: the file cannot be opened, or is not a regular file.

    Example:
        >>> hw.verify("m.safetensors").summary()
        'm.safetensors: intact (32 tensors, 553.4 MB, blake3 digests match)'
    """
    start = time.perf_counter()
    with _opened(path) as header:
        digests = _require_digests(header)
        tensors = _read_tensors(header, set(header.tensors))
        total = _verify_tensors(header, tensors, digests)
    return VerifyResult(str(path), len(tensors), total, DIGEST_ALGORITHM, time.perf_counter() - start)


def _require_digests(header: _Header) -> dict[str, str]:
    digests = (header.manifest or {}).get("_digests")
    if digests is None:
        what = "a plain safetensors file" if header.manifest is None else "written before format version 2"
        raise InvalidArgumentError(f"{header.name}: {what}, with no tensor digests to verify; save it again "
                                   f"with hw.save to add them")
    return digests


def _verify_tensors(header: _Header, tensors: dict[str, torch.Tensor], digests: dict[str, str]) -> int:
    total = 0
    for key, tensor in tensors.items():
        if tensor_digest(tensor) != digests[key]:
            raise ManifestError(f"{header.name}: tensor {key!r} fails its digest check: its bytes were changed "
                                f"or corrupted", key=key)
        total += tensor.numel() * tensor.element_size()
    return total


# --------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------


def _storage_key(t: torch.Tensor) -> tuple[str, int, int]:
    storage = t.untyped_storage()
    return (str(t.device), storage.data_ptr(), storage.nbytes())


def _is_complete(t: torch.Tensor) -> bool:
    storage = t.untyped_storage()
    return t.data_ptr() == storage.data_ptr() and t.numel() * t.element_size() == storage.nbytes()


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep one name per shared storage (one that covers all of it), like save_model."""
    groups: dict[tuple[str, int, int], list[str]] = {}
    for key, value in state.items():
        if value.numel() == 0:
            continue
        groups.setdefault(_storage_key(value), []).append(key)
    aliases: dict[str, str] = {}
    for names in groups.values():
        if len(names) < 2:
            continue
        complete = sorted(n for n in names if _is_complete(state[n]))
        if not complete:
            raise HookwrapError(
                f"tensors {sorted(names)} share memory but none covers all of it; save would store more "
                f"than the model needs: make them independent (.clone()) before saving")
        keep = complete[0]
        for n in names:
            if n != keep:
                aliases[n] = keep
    kept = {k: v for k, v in state.items() if k not in aliases}
    return kept, aliases


def _wrapper_entries(model: nn.Module) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    for path, module in model.named_modules():
        if not W.is_host(module):
            continue
        pre, post = W.host_wrappers(module)
        specs: dict[str, list] = {"pre": [], "post": []}
        for side, items in (("pre", pre), ("post", post)):
            for i, wrapper in enumerate(items):
                where = f"{path}.{W.PRE if side == 'pre' else W.POST}.{i}"
                if not isinstance(wrapper, W.Wrapper):
                    raise HookwrapError(f"{where}: {type(wrapper).__name__} is not a hookwrap wrapper module")
                if W.wrapper_type(wrapper.kind) is not type(wrapper):
                    raise HookwrapError(
                        f"{where}: wrapper type {type(wrapper).__qualname__} (kind {wrapper.kind!r}) is not "
                        f"registered, so it could not be loaded again; register it with hw.register_converter")
                spec = wrapper.spec()
                try:
                    json.dumps(spec, allow_nan=False)
                except (TypeError, ValueError) as exc:
                    raise HookwrapError(f"{where}: its config is not JSON-serializable ({exc})") from None
                specs[side].append(spec)
        entries[path] = {"module": W.host_base(module).__name__, **specs}
    return entries


def save(model: nn.Module, path: str | os.PathLike[str], *, metadata: dict[str, str] | None = None) -> None:
    """Save a converted model to one ``.safetensors`` file, atomically.

    Args:
        model: a model with no forward-path hooks left (``hw.convert`` it first).
        path: where to write; an existing file is replaced only once the new one is
            complete on disk.
        metadata: extra string metadata for the header (keys starting with
            ``hookwrap`` are reserved).

    Raises:
        HookwrapError: the model still has forward hooks, or a wrapper cannot be
            described; nothing is written.
        InvalidArgumentError: ``model`` or ``metadata`` is not usable.

    Example:
        >>> hw.save(hw.convert(model, (x,)), "m.safetensors")
    """
    from safetensors.torch import save_file

    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"save needs an nn.Module, got {type(model).__name__}")
    metadata = dict(metadata or {})
    for key, text in metadata.items():
        if not isinstance(key, str) or not isinstance(text, str):
            raise InvalidArgumentError(f"metadata must map strings to strings; {key!r}: {text!r} does not")
        if key.startswith("hookwrap") or key == "format":
            raise InvalidArgumentError(f"metadata key {key!r} is reserved by hookwrap; choose another name")
        try:
            (key + text).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgumentError(f"metadata {key!r} holds text that is not valid Unicode") from None
    live = forward_hooks(model)
    if live:
        where = ", ".join(f"{h.path or '<root>'} [{h.kind}] {h.name}" for h in live[:5])
        fix = ("global hooks belong to the process: hw.convert(model, example_inputs, global_hooks='convert') "
               "makes them part of the model, or remove them" if all(h.path == GLOBAL_PATH for h in live)
               else "call hw.convert(model, example_inputs) first and save its result")
        raise HookwrapError(
            f"{type(model).__name__} still has {len(live)} forward hook(s) ({where}), which cannot be saved; {fix}")
    wrappers = _wrapper_entries(model)
    state, aliases = _dedupe(model_tensors(model))
    bad = [k for k in state if k.startswith(RESERVED_PREFIX)]
    if bad:
        raise HookwrapError(f"state_dict key {bad[0]!r} uses the prefix {RESERVED_PREFIX!r}, reserved by hookwrap")
    tensors: dict[str, torch.Tensor] = {}
    table: dict[str, list] = {}
    for key, value in state.items():
        if value.dtype not in _DTYPE_NAMES:
            raise HookwrapError(f"tensor {key!r} has dtype {value.dtype}, which safetensors cannot store")
        if value.layout != torch.strided:
            raise HookwrapError(f"tensor {key!r} is {value.layout}; call .to_dense() before saving")
        if value.device.type != "cpu":
            value = value.cpu()
        tensors[key] = value if value.is_contiguous() else value.contiguous()
        table[key] = [_DTYPE_NAMES[value.dtype], list(value.shape)]
    digests = {key: tensor_digest(value) for key, value in tensors.items()}
    report = conversion_report(model) or ConversionReport([])
    manifest: dict[str, Any] = {
        "format": "hookwrap",
        "format_version": FORMAT_VERSION,
        "hookwrap_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "model": W.host_base(model).__name__,
        "wrappers": wrappers,
        "tensors": table,
        "digests": {"algorithm": DIGEST_ALGORITHM, "tensors": digests},
        "aliases": aliases,
        **{name: [a.to_dict() for a in report.of(name)]  # type: ignore[arg-type]
           for name in ("converted", "baked", "stripped", "kept")},
    }
    user_meta = {"format": "pt", **metadata}
    manifest["metadata"] = user_meta
    text = json.dumps(manifest, separators=(",", ":"), allow_nan=False)
    header_meta = {
        **user_meta,
        MANIFEST_KEY: text,
        MARKER_KEY: str(FORMAT_VERSION),
        DIGEST_KEY: manifest_digest(text),
    }
    try:  # before a byte is written: every tensor a wrapper declares is in the table
        _check_wrapper_specs(Path(path).name, wrappers, {k: (v[0], v[1]) for k, v in table.items()})
    except ManifestError as exc:
        raise HookwrapError(f"save would write a file that load refuses: {exc}") from None
    with atomic_path(path) as tmp, file_errors(path, "write the file"):
        save_file(tensors, str(tmp), metadata=header_meta)
        try:  # the file proves itself before it replaces the old one: what load checks first
            read_manifest(tmp)
        except ManifestError as exc:
            raise HookwrapError(f"save would write a file that load refuses: {exc}") from None


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` plus every tensor a wrapper owns, found from the wrappers
    themselves (``<host>.hookwrap_post.<i>.<name>``): a model may override ``state_dict``
    (TransformerLens' bridge renames and filters keys), and a wrapper's tensors must reach
    the file all the same."""
    state: dict[str, torch.Tensor] = dict(model.state_dict())
    state.update(_wrapper_tensors(model))
    return state


def _wrapper_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, W.Wrapper) and W.in_wrapper(path):
            for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                out[f"{path}.{name}"] = tensor.detach()
    return out


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _base_module(base: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    if isinstance(base, nn.Module):
        return base
    if not callable(base):
        raise InvalidArgumentError(f"base must be an nn.Module or a zero-argument factory, got {type(base).__name__}")
    try:
        model = base()
    except Exception as exc:
        raise HookwrapError(f"the base factory {getattr(base, '__qualname__', base)!r} raised "
                            f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise HookwrapError(f"the base factory returned {type(model).__name__}, not an nn.Module")
    return model


def _install_from_manifest(model: nn.Module, wrappers: dict[str, Any], name: str, budget: int) -> None:
    """Build every wrapper the manifest names (already checked by ``_check_wrapper_specs``),
    check every captured graph statically (:mod:`hookwrap._graph_check`, within ``budget``
    bytes) and install them; each module is checked before any is changed."""
    plan: list[tuple[str, nn.Module, list[W.Wrapper], list[W.Wrapper]]] = []
    for path in sorted(wrappers, key=lambda p: (p.count(".") + (p != ""), p)):
        entry = wrappers[path]
        try:
            module = model.get_submodule(path) if path else model
        except AttributeError:
            raise ManifestError(
                f"{name}: the file has wrappers for module {path!r}, which the base model "
                f"{type(model).__name__} does not have; pass the base the file was saved from", key=path) from None
        if W.is_host(module):
            raise ManifestError(f"{name}: module {path!r} of the base already has hookwrap wrappers; "
                                f"pass a plain, freshly built model", key=path)
        if type(module).__name__ != entry["module"]:
            raise ManifestError(
                f"{name}: module {path!r} is a {type(module).__name__} in the base but was a "
                f"{entry['module']!r} when saved", key=path)
        built: dict[str, list[W.Wrapper]] = {}
        for side in ("pre", "post"):
            items = []
            for i, spec in enumerate(entry[side]):
                where = f"{path}.{W.PRE if side == 'pre' else W.POST}.{i}" if path else \
                    f"{W.PRE if side == 'pre' else W.POST}.{i}"
                try:
                    wrapper = W.build_wrapper(spec)
                    for part in wrapper.modules():
                        if isinstance(part, W.CapturedHook):
                            part.check_graph(module, budget=budget)
                    items.append(wrapper)
                except InvalidArgumentError as exc:
                    raise ManifestError(f"{name}: wrapper {where}: {exc}", key=where) from None
                except Exception as exc:  # hostile configs must never escape as another error
                    raise ManifestError(f"{name}: wrapper {where} cannot be built "
                                        f"({type(exc).__name__}: {exc})", key=where) from None
            built[side] = items
        plan.append((path, module, built["pre"], built["post"]))
    for path, module, pre, post in plan:
        W.install(module, pre, post, path=path)


def _shared_groups(state: dict[str, torch.Tensor]) -> list[set[str]]:
    groups: dict[tuple[str, int, int], set[str]] = {}
    for key, value in state.items():
        if value.numel():
            groups.setdefault(_storage_key(value), set()).add(key)
    return [g for g in groups.values() if len(g) > 1]


def _resizes_on_load(model: nn.Module | None, key: str) -> bool:
    """True if the module that owns ``key`` resizes that tensor in its own
    ``_load_from_state_dict`` (torch.ao's observers and fake quantizers, whose statistics
    have no size until they have observed something): its own loader checks the shape."""
    quantizers = tuple(c for c in (
        _loaded_class("torch.ao.quantization.observer", "ObserverBase"),
        _loaded_class("torch.ao.quantization.fake_quantize", "FakeQuantizeBase")) if c is not None)
    if model is None or not quantizers:
        return False
    owner_path = key.rpartition(".")[0]
    try:
        owner = model.get_submodule(owner_path)
    except AttributeError:
        return False
    return isinstance(owner, quantizers)


def _loaded_class(module: str, name: str) -> Any:
    found = sys.modules.get(module)
    return getattr(found, name, None) if found is not None else None


def _check_keys(name: str, header: _Header, state: dict[str, torch.Tensor], strict: bool,
                model: nn.Module | None = None) -> list[str]:
    file_keys = header.tensors
    problems: list[tuple[str, str]] = []
    tied_ok: set[str] = set()
    for group in _shared_groups(state):
        if group & set(file_keys):
            tied_ok |= group - set(file_keys)
    aliases = (header.manifest or {}).get("aliases", {})
    for alias, kept in aliases.items():
        if alias in state and kept in state and not any({alias, kept} <= g for g in _shared_groups(state)):
            problems.append((alias, f"the file stores {alias!r} as a tie to {kept!r}, but the base model "
                                    f"does not share them"))
    for key, (dtype, shape) in file_keys.items():
        if key not in state:
            if strict:
                problems.append((key, f"unexpected key {key!r}: the file has it, the model does not"))
            continue
        want = state[key]
        if list(want.shape) != shape and not _resizes_on_load(model, key):
            problems.append((key, f"shape mismatch for {key!r}: the model expects {list(want.shape)}, "
                                  f"the file has {shape}"))
        elif _DTYPE_NAMES.get(want.dtype) != dtype:
            problems.append((key, f"dtype mismatch for {key!r}: the model expects {want.dtype}, the file has {dtype}"))
    missing = [k for k in state if k not in file_keys and k not in tied_ok]
    if strict:
        problems += [(k, f"missing key {k!r}: the model expects it, the file does not have it") for k in missing]
    if problems:
        shown = "; ".join(text for _, text in problems[:5])
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise ManifestError(f"{name}: {shown}{more}. Pass the base the file was saved from", key=problems[0][0])
    return missing


def load(path: str | os.PathLike[str], base: nn.Module | Callable[[], nn.Module], *, strict: bool = True,
         verify: bool = False) -> nn.Module:
    """Rebuild a model saved with :func:`save`.

    ``base`` gives the architecture: a plain (hook-free) model or a zero-argument
    factory. The manifest's wrappers are put on it, then the tensors are loaded. On a
    plain safetensors file with no manifest this is ordinary weight loading.

    What is always checked, before the base is touched: the file is a regular file; the
    header is well formed and every tensor's dtype, shape and byte range fit the file; the
    manifest matches its sha256 (``hookwrap.digest``), and the header's tensor table and
    metadata match their copies in the manifest; every wrapper type is in hookwrap's
    registry, and every tensor a wrapper declares is in the file with that dtype and shape;
    keys, shapes and dtypes fit the base. ``verify=True`` adds the BLAKE3 digest of every
    tensor's bytes (a changed bit anywhere in the data is caught).

    Args:
        path: the ``.safetensors`` file.
        base: an ``nn.Module`` (changed in place) or a factory returning one.
        strict: refuse missing and unexpected keys (shape and dtype must always match).
            With ``strict=False`` the tensors the file lacks keep the base's values, and
            ``hw.conversion_report(model).missing_keys`` lists them.
        verify: also check every tensor's bytes against its recorded digest.

    Returns:
        The model, in the same mode as ``base``.

    Raises:
        ManifestError: the file is broken, changed or hostile, or does not fit ``base``;
            the message names the key at fault. ``base`` is left exactly as it was.
        HookwrapError: the file cannot be opened or is not a regular file, or the factory
            failed.

    Example:
        >>> model = hw.load("m.safetensors", base=lambda: torchvision.models.vgg16(weights=None))
    """
    with _opened(path) as header:
        if verify:
            _require_digests(header)
        model = _base_module(base)
        return _load_into(model, header, strict=strict, verify=verify)


def _load_into(model: nn.Module, header: _Header, *, strict: bool, verify: bool) -> nn.Module:
    name = header.name
    live = forward_hooks(model)
    if live and header.manifest is not None:
        where = ", ".join(f"{h.where} [{h.kind}] {h.name}" for h in live[:5])
        raise ManifestError(
            f"{name}: the base model still has live forward hooks ({where}); the file records what became of "
            f"every hook of the saved model (its wrappers stand for the converted ones), and these would run on "
            f"top. Pass a base without hooks, or hw.strip() it first", key=live[0].path or "<root>")
    touched = [model]
    if header.manifest is not None:
        for wrapped in header.manifest["wrappers"]:
            try:
                touched.append(model.get_submodule(wrapped))
            except AttributeError:
                pass  # reported by _install_from_manifest
    with transaction(model, touched):
        if header.manifest is not None:
            budget = budget_for((dtype, shape) for d, shape in header.tensors.values()
                                if (dtype := _DTYPES[d][0]) is not None)
            _install_from_manifest(model, header.manifest["wrappers"], name, budget)
        plain = model.state_dict()
        state = {**plain, **_wrapper_tensors(model)}
        missing = _check_keys(name, header, state, strict, model)
        tensors = _read_tensors(header, set(header.tensors))
        if verify:
            _verify_tensors(header, tensors, header.manifest["_digests"])  # type: ignore[index]
        owned = _wrapper_tensors(model)
        with torch.no_grad():
            for key in [k for k in tensors if k in owned]:  # a wrapper's own tensors, whatever state_dict says
                owned[key].copy_(tensors.pop(key))
        _copy_tensors(model, tensors, getattr(plain, "_metadata", None))
        actions = header.manifest["_actions"] if header.manifest is not None else []
        if actions or missing:
            attach_report(model, actions, missing_keys=missing)
    return model


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True,
                 assign: bool = False) -> nn.Module:
    """Load a file's tensors into ``model`` as a plain state dict, hooks left as they are.

    This is how a parity reference (the original, hooked model) gets the weights of a
    saved conversion: conversion keeps ``state_dict`` keys, so they match. Tensors owned
    by wrappers (``*.hookwrap_pre.*``, ``*.hookwrap_post.*``) are ignored and the
    manifest's wrappers are never applied. With ``assign=True`` the model's parameters
    and buffers are replaced by the loaded tensors instead of written into (tied ones stay
    tied), so a copy that shares its tensors with another model leaves that model alone.

    Raises:
        ManifestError: the file is broken or its keys, shapes or dtypes do not fit;
            ``model`` is left unchanged.
        HookwrapError: the file cannot be opened or is not a regular file.
    """
    with _opened(path) as header:
        plain = replace(header, tensors={k: v for k, v in header.tensors.items() if not W.in_wrapper(k)})
        state = model.state_dict()
        _check_keys(header.name, plain, state, strict)
        tensors = _read_tensors(header, set(plain.tensors))
        if assign:  # keys the file stores once for a tied group get the same tensor
            for group in _shared_groups(state):
                source = next((k for k in sorted(group) if k in tensors), None)
                for key in group:
                    if source is not None and key not in tensors:
                        tensors[key] = tensors[source]
        _copy_tensors(model, tensors, getattr(state, "_metadata", None), assign=assign)
    return model


def _read_tensors(header: _Header, keys: set[str]) -> dict[str, torch.Tensor]:
    """The file's tensors named in ``keys``, mapped copy-on-write from the already opened
    file, at the byte ranges of the header this module checked (no second parser reads it,
    and the path is never opened again)."""
    if sys.byteorder != "little":  # pragma: no cover - safetensors data is little-endian
        return _read_tensors_with_safetensors(header, keys)
    try:
        mapped = mmap.mmap(header.handle.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{header.name}: reading tensor data failed: {exc}", key="data") from None
    if len(mapped) != header.size:
        now = len(mapped)
        mapped.close()
        raise ManifestError(f"{header.name}: the file changed size while it was being read "
                            f"({header.size} bytes, now {now})", key="data")
    whole = torch.frombuffer(mapped, dtype=torch.uint8)
    tensors = {}
    for key in keys:
        name, shape = header.tensors[key]
        dtype, size = _DTYPES[name]
        if dtype is None:
            raise ManifestError(f"{header.name}: tensor {key!r} is {name}, which this torch "
                                f"{torch.__version__} has no dtype for", key=key)
        begin, end = header.spans[key]
        chunk = whole[begin:end]
        if begin % size:  # a view needs aligned storage; an unaligned tensor is copied
            chunk = chunk.clone()
        tensors[key] = chunk.view(dtype).reshape(shape)
    return tensors


def _read_tensors_with_safetensors(header: _Header, keys: set[str]) -> dict[str, torch.Tensor]:  # pragma: no cover
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(fd_path(header.handle, header.path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise ManifestError(f"{header.name}: reading tensor data failed: {exc}", key="data") from None
    return {k: v for k, v in tensors.items() if k in keys}


def _copy_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], metadata: Any, *,
                  assign: bool = False) -> None:
    """Copy ``tensors`` into ``model`` (or, with ``assign``, put them in place of its own).
    ``metadata`` is the ``_metadata`` of ``model.state_dict()`` (state-dict versions)."""
    state: OrderedDict[str, torch.Tensor] = OrderedDict(tensors)
    # Modules with a versioned state dict (torchvision's MNASNet, BatchNorm) read their
    # version from the state dict's metadata; the file's tensors are in this code's format.
    state._metadata = metadata  # type: ignore[attr-defined]
    with torch.no_grad():
        model.load_state_dict(state, strict=False, assign=assign)
