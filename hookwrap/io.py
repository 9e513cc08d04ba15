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
:data:`hookwrap._file.MAX_HEADER` bytes, :data:`hookwrap._file.MAX_WRAPPERS` wrappers in all (``Chain`` items
included), ``Chain`` nesting :data:`hookwrap.wrappers.MAX_CHAIN_DEPTH`, captured graphs
:data:`hookwrap._graph.MAX_NODES` nodes, tree specs :data:`hookwrap._tree.MAX_DEPTH`
levels.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import _file
from . import wrappers as W
from ._file import (
    DIGEST_ALGORITHM,
    DIGEST_KEY,
    FORMAT_VERSION,
    MANIFEST_KEY,
    MARKER_KEY,
    MAX_WRAPPERS,
    RESERVED_PREFIX,
    Header,
    VerifyResult,
    bytes_digest,
    manifest_digest,
    opened,
    require_digests,
)
from ._fs import atomic_path, fd_path, file_errors
from ._graph_check import budget_for
from ._txn import transaction
from ._version import __version__
from .errors import HookwrapError, InvalidArgumentError, ManifestError
from .inventory import GLOBAL_PATH, forward_hooks
from .report import Action, ConversionReport, attach_report, conversion_report

__all__ = ["save", "load", "load_weights", "read_manifest", "verify", "VerifyResult", "manifest_digest",
           "tensor_digest", "FORMAT_VERSION", "MANIFEST_KEY"]

_DTYPES = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4),
    "I16": (torch.int16, 2), "I8": (torch.int8, 1), "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
    "U16": (getattr(torch, "uint16", None), 2), "U32": (getattr(torch, "uint32", None), 4),
    "U64": (getattr(torch, "uint64", None), 8), "C64": (torch.complex64, 8),
    "F8_E4M3": (getattr(torch, "float8_e4m3fn", None), 1), "F8_E5M2": (getattr(torch, "float8_e5m2", None), 1),
}
_DTYPE_NAMES = {dtype: name for name, (dtype, _) in _DTYPES.items() if dtype is not None}


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().reshape(-1)
    if not flat.is_contiguous():  # pragma: no cover - reshape(-1) of a contiguous tensor is
        flat = flat.contiguous()
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")  # type: ignore[arg-type]


def _verify_tensors(header: Header, tensors: dict[str, torch.Tensor], digests: dict[str, str]) -> None:
    """Hash the tensors as they were mapped for loading (the bytes the model gets)."""
    for key, tensor in tensors.items():
        if tensor_digest(tensor) != digests[key]:
            raise ManifestError(f"{header.name}: tensor {key!r} fails its digest check: its bytes were changed "
                                f"or corrupted", key=key)


def tensor_digest(tensor: torch.Tensor) -> str:
    """The BLAKE3 digest (hex) of a contiguous CPU tensor's bytes, as the file stores them."""
    return bytes_digest(_tensor_bytes(tensor))


def check_wrapper_specs(name: str, wrappers: dict[str, Any], tensors: dict[str, tuple[str, list[int]]]) -> None:
    """Check every wrapper spec against the registry, the wrapper count, and every tensor a
    wrapper declares against the file, before anything is built or allocated (the entries'
    shape is checked by :mod:`hookwrap._file` first)."""
    count = 0
    for path, entry in wrappers.items():
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


@contextlib.contextmanager
def _opened(path: str | os.PathLike[str]) -> Iterator[Header]:
    with opened(path, check_wrapper_specs) as header:
        yield header


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The hookwrap manifest of a file, checked (see this module's docstring for the schema).

    Raises:
        ManifestError: the file is not a hookwrap file, or it is broken.
        HookwrapError: the file cannot be opened, or is not a regular file.

    Example:
        >>> hw.read_manifest("m.safetensors")["wrappers"]["features.0"]["post"]
        [{'type': 'Dropout2d', 'config': {'p': 0.2, 'always': True}}]
    """
    return _file.read_manifest(path, check_wrapper_specs)


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
    return _file.verify(path, check_wrapper_specs)


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


def save(model: nn.Module, path: str | os.PathLike[str], *, metadata: dict[str, str] | None = None,
         progress: Callable[[int, int], None] | None = None) -> None:
    """Save a converted model to one ``.safetensors`` file, atomically.

    Args:
        model: a model with no forward-path hooks left (``hw.convert`` it first).
        path: where to write; an existing file is replaced only once the new one is
            complete on disk.
        metadata: extra string metadata for the header (keys starting with
            ``hookwrap`` are reserved).
        progress: called as ``progress(done, total)`` with the tensor bytes written.

    Raises:
        HookwrapError: the model still has forward hooks, or a wrapper cannot be
            described; nothing is written.
        InvalidArgumentError: ``model`` or ``metadata`` is not usable.

    Example:
        >>> hw.save(hw.convert(model, (x,)), "m.safetensors")
    """
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
        check_wrapper_specs(Path(path).name, wrappers, {k: (v[0], v[1]) for k, v in table.items()})
    except ManifestError as exc:
        raise HookwrapError(f"save would write a file that load refuses: {exc}") from None
    # Largest alignment first, as safetensors orders them, so every tensor starts aligned.
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    with atomic_path(path) as tmp, file_errors(path, "write the file"):
        with open(tmp, "wb") as fh:
            _file.write_file(fh, [(k, table[k][0], table[k][1], _tensor_bytes(tensors[k])) for k in order],
                             header_meta, progress=progress)
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
    """Build every wrapper the manifest names (already checked by ``check_wrapper_specs``),
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


def _check_keys(name: str, header: Header, state: dict[str, torch.Tensor], strict: bool,
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
            require_digests(header)
        model = _base_module(base)
        return _load_into(model, header, strict=strict, verify=verify)


def _load_into(model: nn.Module, header: Header, *, strict: bool, verify: bool) -> nn.Module:
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
        owned = _wrapper_tensors(model)
        state = {**plain, **owned}
        missing = _check_keys(name, header, state, strict, model)
        on_meta = _meta_tensors(model)
        if on_meta:  # a base built on the meta device gets the file's tensors, mapped, in place of its own
            _check_meta_base(name, on_meta, header, model)
        tensors = _read_tensors(header, set(header.tensors))
        if verify:
            _verify_tensors(header, tensors, header.manifest["_digests"])  # type: ignore[index]
        with torch.no_grad():
            for key in [k for k in tensors if k in owned]:  # a wrapper's own tensors, whatever state_dict says
                owned[key].copy_(tensors.pop(key))
        if on_meta:
            _share_tied(_tied_groups(model), tensors)
        _copy_tensors(model, tensors, getattr(plain, "_metadata", None), assign=bool(on_meta))
        actions = [Action(**a) for a in header.manifest["_actions"]] if header.manifest is not None else []
        if actions or missing:
            attach_report(model, actions, missing_keys=missing)
    return model


def _named_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(k, t) for k, t in [*model.named_parameters(remove_duplicate=False),
                                *model.named_buffers(remove_duplicate=False)] if t is not None]


def _meta_tensors(model: nn.Module) -> list[str]:
    """The names of ``model``'s parameters and buffers on the meta device (a fast check
    first: the names are needed only when there are some)."""
    if not any(t.is_meta for m in model.modules() for t in (*m._parameters.values(), *m._buffers.values())
               if t is not None):
        return []
    return [k for k, t in _named_tensors(model) if t.is_meta]


def _tied_groups(model: nn.Module) -> list[set[str]]:
    """Names that are one parameter or buffer object (tied), found by identity: meta
    tensors have no storage to compare."""
    groups: dict[int, set[str]] = {}
    for key, tensor in _named_tensors(model):
        groups.setdefault(id(tensor), set()).add(key)
    return [g for g in groups.values() if len(g) > 1]


def _check_meta_base(name: str, on_meta: list[str], header: Header, model: nn.Module) -> None:
    """Every tensor of a base on the meta device must come from the file (or be tied to one
    that does): a buffer the state dict leaves out, or a key the file lacks, would stay
    without data."""
    tied = {k for group in _tied_groups(model) if any(g in header.tensors for g in group) for k in group}
    lost = [k for k in on_meta if k not in header.tensors and k not in tied]
    if lost:
        raise InvalidArgumentError(
            f"{name}: the base was built on the meta device, and {lost[0]!r} is not in the file "
            f"({len(lost)} such tensor(s); a non-persistent buffer is never saved); build that part of the base "
            f"on the CPU")


def _share_tied(groups: list[set[str]], tensors: dict[str, torch.Tensor]) -> None:
    """Keys the file stores once for a tied group get the same tensor (for ``assign``)."""
    for group in groups:
        source = next((k for k in sorted(group) if k in tensors), None)
        for key in group:
            if source is not None and key not in tensors:
                tensors[key] = tensors[source]


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
        if assign:
            _share_tied(_shared_groups(state), tensors)
        _copy_tensors(model, tensors, getattr(state, "_metadata", None), assign=assign)
    return model


def _read_tensors(header: Header, keys: set[str]) -> dict[str, torch.Tensor]:
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


def _read_tensors_with_safetensors(header: Header, keys: set[str]) -> dict[str, torch.Tensor]:  # pragma: no cover
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
    groups = _tied_groups(model) if assign else []
    with torch.no_grad():
        model.load_state_dict(state, strict=False, assign=assign)
    for group in groups:  # assign makes one Parameter per key: tie them again, as they were
        first, *others = sorted(group)
        owner, _, attr = first.rpartition(".")
        tensor = getattr(model.get_submodule(owner), attr)
        for key in others:
            owner, _, attr = key.rpartition(".")
            setattr(model.get_submodule(owner), attr, tensor)
