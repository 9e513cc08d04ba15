"""The hookwrap file format without torch: a ``.safetensors`` file's header and manifest,
checked completely, its digests, and :func:`verify`.

This is the part of :mod:`hookwrap.io` that the torch-free gate (``pip install hookwrap``)
needs: ``hookwrap verify`` and ``hookwrap inspect FILE.safetensors`` run on it alone.
:mod:`hookwrap.io` adds what needs torch (the wrapper registry's checks, save and load) and
passes its wrapper check in as ``check``. The file layout and the manifest schema are
described in :mod:`hookwrap.io`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ._fs import file_errors, open_regular
from ._version import __version__
from .errors import HookwrapError, InvalidArgumentError, ManifestError

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

# Bytes per element of every dtype a safetensors header may name.
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "C64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
# Reads for hashing go through one buffer of this size, so verify holds no tensor in memory.
_CHUNK = 64 << 20

# check(name, wrappers, tensors): hookwrap.io's check of every wrapper spec against its
# registry and the file's tensors; it raises ManifestError.
WrapperCheck = Callable[[str, dict[str, Any], dict[str, tuple[str, list[int]]]], None]


def manifest_digest(text: str) -> str:
    """The ``hookwrap.digest`` of a manifest text: its sha256, hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_file(handle: BinaryIO, tensors: list[tuple[str, str, list[int], memoryview]], metadata: dict[str, str], *,
               progress: Callable[[int, int], None] | None = None) -> None:
    """Write a safetensors file: the 8-byte header length, the JSON header (padded with
    spaces to 8 bytes, as safetensors pads it), then every tensor's bytes in the given
    order, streamed from ``(key, dtype name, shape, bytes)`` with no copy.
    ``progress(done, total)`` is called with the bytes written so far."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key, dtype, shape, data in tensors:
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    handle.write(struct.pack("<Q", len(text)) + text)
    done = 0
    for _, _, _, data in tensors:
        flat = data.cast("B") if data.nbytes else data
        for start in range(0, flat.nbytes, _CHUNK):
            handle.write(flat[start:start + _CHUNK])
        done += data.nbytes
        if progress is not None:
            progress(done, offset)


def bytes_digest(data: bytes | memoryview) -> str:
    """The BLAKE3 digest (hex) of ``data``, as the manifest records a tensor's bytes."""
    hasher = _hasher(len(data))
    hasher.update(data)
    return hasher.hexdigest()


def _hasher(nbytes: int) -> Any:
    import blake3

    return blake3.blake3(max_threads=blake3.blake3.AUTO if nbytes >= (8 << 20) else 1)


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
class Header:
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
def opened(path: str | os.PathLike[str], check: WrapperCheck | None = None) -> Iterator[Header]:
    """Open a hookwrap or safetensors file (regular files only), parse and check its header
    completely before anything is loaded, and keep it open for reading the tensors."""
    handle = open_regular(path, what="safetensors file")
    try:
        try:
            header = _read_header(Path(path), handle, check)
        except HookwrapError:
            raise
        except Exception as exc:  # whatever a hostile header provokes, it is a ManifestError
            raise ManifestError(f"{Path(path).name}: the header cannot be read ({type(exc).__name__}: "
                                f"{str(exc)[:200]})", key="header") from None
        yield header
    finally:
        handle.close()


def _read_header(p: Path, fh: BinaryIO, check: WrapperCheck | None) -> Header:
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
    manifest = _parse_manifest(name, meta, tensors, check)
    start = 8 + n
    return Header(p, fh, tensors, meta, manifest, {k: (start + b, start + e) for b, e, k in spans}, size)


def _tensor_entry(name: str, key: str, entry: Any) -> tuple[str, list[int], int, int]:
    """``(dtype, shape, begin, end)`` of one header entry, every part checked: a known dtype,
    at most 64 sizes that do not multiply past 2**62 (a size of 0 among them or not: torch
    computes strides from the others), and a byte range as long as the shape needs."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ManifestError(f"{name}: header entry {key!r} is not a tensor description", key=key)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_SIZES:
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
    if nonzero * DTYPE_SIZES[dtype] >= 2**62:
        raise ManifestError(f"{name}: tensor {key!r} has a shape {str(shape)[:80]} whose sizes multiply past "
                            f"2**62", key=key)
    if not 0 <= begin <= end or end - begin != numel * DTYPE_SIZES[dtype]:
        raise ManifestError(
            f"{name}: tensor {key!r} spans bytes {begin}..{end} but {dtype}{shape} needs "
            f"{numel * DTYPE_SIZES[dtype]}", key=key)
    return dtype, shape, begin, end


def _parse_manifest(name: str, meta: dict[str, str], tensors: dict[str, tuple[str, list[int]]],
                    check: WrapperCheck | None) -> dict[str, Any] | None:
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
    _check_wrapper_entries(name, manifest["wrappers"])
    if check is not None:
        check(name, manifest["wrappers"], tensors)
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


def _check_wrapper_entries(name: str, wrappers: dict[str, Any]) -> None:
    """Every wrapper entry is ``{module, pre, post}`` under a module path (the specs in
    ``pre`` and ``post`` are the wrapper registry's to check)."""
    for path, entry in wrappers.items():
        if not _PATH.match(path) or len(path) > 1000:
            raise ManifestError(f"{name}: wrapper entry {path[:80]!r} is not a module path", key=path[:80])
        if not isinstance(entry, dict) or set(entry) != {"module", "pre", "post"} or not isinstance(entry["module"], str) \
                or not isinstance(entry["pre"], list) or not isinstance(entry["post"], list):
            raise ManifestError(f"{name}: wrapper entry for {path!r} is malformed", key=path)


_ACTION_FIELDS = {"path", "kind", "name", "origin", "action", "detail", "wrapper", "position"}


def _actions(name: str, manifest: dict[str, Any]) -> list[dict[str, str | None]]:
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
            actions.append(dict(item))
    return actions


def read_manifest(path: str | os.PathLike[str], check: WrapperCheck | None = None) -> dict[str, Any]:
    """:func:`hookwrap.io.read_manifest` without torch: ``check`` is the wrapper registry's
    check, or None to leave the wrapper specs to ``load``."""
    with opened(path, check) as header:
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
    wrappers_checked: bool = True  # False without torch: load checks the wrapper types

    def __bool__(self) -> bool:
        return True

    def summary(self) -> str:
        unchecked = "" if self.wrappers_checked else "; wrapper types not checked without torch"
        return (f"{Path(self.path).name}: intact ({self.tensors} tensors, {self.bytes / 1e6:.1f} MB, "
                f"{self.algorithm} digests match{unchecked})")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "intact": True, "tensors": self.tensors, "bytes": self.bytes,
                "algorithm": self.algorithm, "seconds": round(self.seconds, 3),
                "wrappers_checked": self.wrappers_checked}

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            from ._fs import atomic_write_text

            atomic_write_text(path, text + "\n")
        return text


def require_digests(header: Header) -> dict[str, str]:
    digests = (header.manifest or {}).get("_digests")
    if digests is None:
        what = "a plain safetensors file" if header.manifest is None else "written before format version 2"
        raise InvalidArgumentError(f"{header.name}: {what}, with no tensor digests to verify; save it again "
                                   f"with hw.save to add them")
    return digests




def verify(path: str | os.PathLike[str], check: WrapperCheck | None = None, *,
           progress: Callable[[int, int], None] | None = None) -> VerifyResult:
    """Check a hookwrap file's header and every tensor's bytes against the BLAKE3 digest
    that ``save`` recorded, reading the data in chunks (no tensor is held in memory and no
    model is built). :func:`hookwrap.io.verify` is this with the wrapper registry's checks.

    Returns:
        A :class:`VerifyResult` (truthy).

    Raises:
        ManifestError: the file was changed or is damaged; ``key`` names the tensor (or
            header entry) at fault.
        InvalidArgumentError: the file has no digests to check.
        HookwrapError: the file cannot be opened, or is not a regular file.

    ``progress(done, total)`` is called with the bytes hashed so far, after each chunk.
    """
    start = time.perf_counter()
    with opened(path, check) as header:
        digests = require_digests(header)
        total, everything = 0, sum(e - b for b, e in header.spans.values())
        buffer = bytearray(min(_CHUNK, max((e - b for b, e in header.spans.values()), default=0)))
        view = memoryview(buffer)
        with file_errors(header.path, "read the safetensors file", ManifestError):
            if os.fstat(header.handle.fileno()).st_size != header.size:
                raise ManifestError(f"{header.name}: the file changed size while it was being read", key="data")
            for key, (begin, end) in sorted(header.spans.items(), key=lambda item: item[1]):
                hasher = _hasher(end - begin)
                header.handle.seek(begin)
                left = end - begin
                while left:
                    got = header.handle.readinto(view[:min(left, len(buffer))])  # type: ignore[attr-defined]
                    if not got:
                        raise ManifestError(f"{header.name}: the file ended inside tensor {key!r}: it changed "
                                            f"while it was being read", key=key)
                    hasher.update(view[:got])
                    left -= got
                    if progress is not None:
                        progress(total + (end - begin) - left, everything)
                if hasher.hexdigest() != digests[key]:
                    raise ManifestError(f"{header.name}: tensor {key!r} fails its digest check: its bytes were "
                                        f"changed or corrupted", key=key)
                total += end - begin
    return VerifyResult(str(path), len(header.tensors), total, DIGEST_ALGORITHM, time.perf_counter() - start,
                        check is not None)
