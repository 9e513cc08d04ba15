"""Attacks on the promise that a file is data (SECURITY.md), one test per finding.

Each test is written as an attacker would write it: craft a file (recomputing every
digest, so the attack reaches the deepest check), hand it to hookwrap, and look for the
damage: a canary module imported, a canary file created or changed, a hang, memory
allocated, or an exception from outside the HookwrapError family.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch
from crafting import edit_header, gib_file, hooked_small, refuse_in_child, rewrite
from helpers import ROOT, hook_table, small_cnn, state_equal

import hookwrap as hw
from hookwrap import wrappers as W

TESTS = str(ROOT / "tests")
CAPTURED = "5.hookwrap_post.0"  # the CapturedHook of crafting.hooked_small


def refused(path, *, base=None, verify=False, error=hw.HookwrapError):
    """Load ``path``: it must raise ``error`` and leave the base exactly as it was."""
    base = base if base is not None else small_cnn(seed=9)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    table = hook_table(base)
    with pytest.raises(error) as info:
        hw.load(path, base=base, verify=verify)
    assert state_equal(base.state_dict(), state)
    assert hook_table(base) == table and not any(W.is_host(m) for m in base.modules())
    return info.value


def captured_config(manifest):
    return manifest["wrappers"]["5"]["post"][0]["config"]


def folder_state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ----------------------------------------------------------------------------------------
# 1. A file must not make load import a module (tree specs)
# ----------------------------------------------------------------------------------------


@pytest.fixture
def canary_module(tmp_path, monkeypatch):
    """A module on sys.path that creates a canary file when imported."""
    canary = tmp_path / "canary-imported"
    (tmp_path / "hookwrap_canary_spec.py").write_text(f"open({str(canary)!r}, 'w').write('pwned')\nx = list\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield canary
    assert "hookwrap_canary_spec" not in sys.modules, "the file made hookwrap import a module"
    assert not canary.exists(), "the canary module ran"


TORCH_DEFAULTDICT_SPEC = json.dumps([1, {"type": "builtins.tuple", "context": "null", "children_spec": [
    {"type": "collections.defaultdict",
     "context": {"default_factory_module": "hookwrap_canary_spec", "default_factory_name": "x", "dict_context": []},
     "children_spec": []}]}])


@pytest.mark.parametrize("spec", [
    TORCH_DEFAULTDICT_SPEC,  # torch's treespec_dumps form: its loader imports the factory's module
    {"type": "collections.defaultdict", "module": "hookwrap_canary_spec", "children": []},
    {"namedtuple": ["a"], "items": [None], "type": "hookwrap_canary_spec.x"},
    {"enum": "hookwrap_canary_spec.x"},
])
def test_a_tree_spec_cannot_make_load_import_a_module(tmp_path, canary_module, spec):
    good = hooked_small(tmp_path)
    bad = rewrite(good, tmp_path / "bad.safetensors", manifest_fn=lambda m: captured_config(m).update(in_spec=spec))
    err = refused(bad, error=hw.ManifestError)
    assert err.key == CAPTURED and "tree spec refused" in str(err)


def test_tree_specs_are_refused_beyond_their_limits(tmp_path):
    good = hooked_small(tmp_path)
    deep = None
    for _ in range(200):
        deep = {"tuple": [deep]}
    bad = rewrite(good, tmp_path / "deep.safetensors", manifest_fn=lambda m: captured_config(m).update(in_spec=deep))
    assert "nested deeper" in str(refused(bad, error=hw.ManifestError))


# ----------------------------------------------------------------------------------------
# 2. A loaded model must not read or write files (captured graphs run allowlisted ops only)
# ----------------------------------------------------------------------------------------


def _graph_attack(tmp_path, nodes_fn):
    good = hooked_small(tmp_path)

    def mutate(manifest):
        graph = captured_config(manifest)["graph"]
        n = graph["inputs"]
        graph["nodes"], graph["outputs"] = nodes_fn(n)

    return rewrite(good, tmp_path / "bad.safetensors", manifest_fn=mutate)


def test_a_captured_graph_cannot_overwrite_a_file(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious data\n")

    def nodes(n):  # from_file(victim, shared=True) then fill_ with 'A': overwrites the victim
        return ([{"op": "aten.from_file.default", "args": [str(victim), True, 8],
                  "kwargs": {"dtype": {"dtype": "uint8"}}},
                 {"op": "aten.fill_.Scalar", "args": [{"n": n}, 65], "kwargs": {}}],
                [{"n": 1}])

    bad = _graph_attack(tmp_path, nodes)
    before = folder_state(tmp_path)
    err = refused(bad, error=hw.ManifestError)
    assert "aten.from_file.default" in str(err) and err.key == CAPTURED
    assert folder_state(tmp_path) == before


def test_a_captured_graph_cannot_read_a_file(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")

    def nodes(n):  # read the secret into the output
        return ([{"op": "aten.from_file.default", "args": [str(secret), False, 6],
                  "kwargs": {"dtype": {"dtype": "uint8"}}},
                 {"op": "aten.sum.default", "args": [{"n": n}], "kwargs": {}},
                 {"op": "aten.add.Tensor", "args": [{"n": 1}, {"n": n + 1}], "kwargs": {}}],
                [{"n": n + 2}])

    err = refused(_graph_attack(tmp_path, nodes), error=hw.ManifestError)
    assert "aten.from_file.default" in str(err) and "not on the allowlist" in str(err)


@pytest.mark.parametrize("op,args", [
    ("aten.mul_.Tensor", lambda n: [{"n": 1}, 2.0]),              # writes to a graph input in place
    ("aten.copy_.default", lambda n: [{"n": 1}, {"n": 0}]),
    ("aten.set_.source_Tensor", lambda n: [{"n": 1}, {"n": 0}]),
    ("aten.as_strided.default", lambda n: [{"n": 1}, [1000000], [1]]),  # reads memory around a tensor
    ("aten.empty.memory_format", lambda n: [[16]]),                # uninitialised memory
    ("aten.manual_seed.default", lambda n: [0]),                   # (does not exist: refused anyway)
    ("aten._local_scalar_dense.default", lambda n: [{"n": 1}]),
])
def test_captured_graphs_refuse_ops_off_the_allowlist(tmp_path, op, args):
    bad = _graph_attack(tmp_path, lambda n: ([{"op": op, "args": args(n), "kwargs": {}}], [{"n": 1}]))
    err = refused(bad, error=hw.ManifestError)
    assert op in str(err) and err.key == CAPTURED


def test_python_functions_in_graphs_take_no_container_constants(tmp_path):
    """``operator.mul([0], 10**12)`` would build a list of a trillion items when run."""

    def nodes(n):
        return ([{"op": "operator.mul", "args": [{"list": [0]}, 10**12], "kwargs": {}}], [{"n": 1}])

    assert "operator.mul" in str(refused(_graph_attack(tmp_path, nodes), error=hw.ManifestError))


def test_convert_refuses_the_ops_that_load_refuses():
    """A hook whose captured graph would hold an op off the allowlist is a blocker, never a
    file that load would refuse."""
    model = small_cnn()
    model[5].register_forward_hook(lambda m, a, o: o + torch.i0(o))  # a pure op, but not on the list
    with pytest.raises(hw.UnconvertibleHookError, match=r"aten\.i0\.default' is not on the allowlist"):
        hw.convert(model, (torch.randn(2, 3, 10, 10),))


# ----------------------------------------------------------------------------------------
# 3. check_parity and bisect never write beside the user's ONNX file
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    model = small_cnn()
    x = torch.randn(2, 3, 10, 10)
    hw.export_onnx(model, (x,), folder / "plain.onnx")
    return model, x, folder / "plain.onnx"


def _with_external_data(src: Path, folder: Path) -> Path:
    folder.mkdir()
    proto = onnx.load(str(src))
    onnx.save(proto, str(folder / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=256)
    return folder / "m.onnx"


def _plant(path: Path, location: str, payload: bytes) -> None:
    """Add a local function holding a Constant whose tensor is marked external *and*
    carries raw bytes: onnx.save of this model writes the bytes to ``location``."""
    proto = onnx.load(str(path), load_external_data=False)
    tensor = onnx.helper.make_tensor("planted", onnx.TensorProto.UINT8, [len(payload)], payload, raw=True)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    node = onnx.helper.make_node("Constant", [], ["c"], value=tensor)
    proto.functions.append(onnx.helper.make_function("evil", "unused", [], ["c"], [node],
                                                     [onnx.helper.make_opsetid("", 18)]))
    path.write_bytes(proto.SerializeToString())


@pytest.mark.parametrize("check", ["bisect", "check_parity"])
def test_planted_external_data_never_creates_or_changes_files(tmp_path, cnn_onnx, check):
    model, x, plain = cnn_onnx
    path = _with_external_data(plain, tmp_path / "models")
    (tmp_path / "models" / "sibling.txt").write_bytes(b"keep me\n")
    _plant(path, "pwned.txt", b"created by the model file\n")
    before = folder_state(tmp_path / "models")
    with pytest.raises(hw.HookwrapError, match="mixes external data with inline data"):
        getattr(hw, check)(model, path, (x,))
    assert folder_state(tmp_path / "models") == before
    _plant(path, "sibling.txt", b"appended by the model file\n")
    before = folder_state(tmp_path / "models")
    with pytest.raises(hw.HookwrapError):
        getattr(hw, check)(model, path, (x,))
    assert folder_state(tmp_path / "models") == before


def test_bisect_and_check_parity_of_external_data_write_nothing(tmp_path, cnn_onnx):
    model, x, plain = cnn_onnx
    path = _with_external_data(plain, tmp_path / "models")
    before = folder_state(tmp_path / "models")
    assert hw.check_parity(model, path, (x,), random_inputs=1)
    report = hw.bisect(model, path, (x,))
    assert report and len(report.layers) >= 3
    assert folder_state(tmp_path / "models") == before


@pytest.mark.parametrize("location", ["/etc/hostname", "../outside.bin", "link.bin", "fifo.bin"])
def test_external_data_is_read_only_from_regular_files_inside_the_model_folder(tmp_path, cnn_onnx, location):
    model, x, plain = cnn_onnx
    path = _with_external_data(plain, tmp_path / "models")
    (tmp_path / "outside.bin").write_bytes((tmp_path / "models" / "m.data").read_bytes())
    os.symlink(tmp_path / "outside.bin", tmp_path / "models" / "link.bin")
    os.mkfifo(tmp_path / "models" / "fifo.bin")
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(hw.HookwrapError, match="outside the model's folder|absolute path|'\\.\\.'|FIFO"):
        hw.check_parity(model, path, (x,))


# ----------------------------------------------------------------------------------------
# 4. A FIFO never hangs a reader
# ----------------------------------------------------------------------------------------

FIFO_CASES = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, {tests!r})
    import numpy as np
    import hookwrap as hw
    from helpers import small_cnn
    folder = {folder!r}
    fifo = os.path.join(folder, "fifo.safetensors")
    npz = os.path.join(folder, "fifo.npz")
    os.mkfifo(fifo); os.mkfifo(npz)
    model = small_cnn()
    cases = {{
        "load": lambda: hw.load(fifo, base=small_cnn()),
        "read_manifest": lambda: hw.read_manifest(fifo),
        "verify": lambda: hw.verify(fifo),
        "check_parity weights": lambda: hw.check_parity(model, {onnx!r}, weights=fifo),
        "check_parity npz inputs": lambda: hw.check_parity(model, {onnx!r}, npz),
        "check_parity onnx": lambda: hw.check_parity(model, fifo),
    }}
    for name, case in cases.items():
        try:
            case()
            print(name, "NOT REFUSED")
        except hw.HookwrapError as exc:
            print(name, "refused:", "FIFO" in str(exc))
""")


def test_a_fifo_never_hangs_load_verify_weights_or_inputs(tmp_path, cnn_onnx):
    code = FIFO_CASES.format(tests=TESTS, folder=str(tmp_path), onnx=str(cnn_onnx[2]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 6 and all(line.endswith("refused: True") for line in lines), proc.stdout


def test_the_cli_refuses_a_fifo_weights_file_at_once(tmp_path, cnn_onnx):
    os.mkfifo(tmp_path / "w.safetensors")
    cli = Path(sys.executable).parent / "hookwrap"
    proc = subprocess.run([str(cli), "check", str(cnn_onnx[2]), "--reference", f"{TESTS}/helpers.py:small_cnn",
                           "--weights", str(tmp_path / "w.safetensors")], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2 and "FIFO" in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------
# 5. Every failure is a HookwrapError naming the path
# ----------------------------------------------------------------------------------------


def _big_int_in_manifest(tmp_path, good):
    def mutate(manifest):
        manifest["wrappers"]["0"]["post"][0]["config"]["items"][0]["config"]["factor"] = 10**5000

    import sys as _sys

    limit = _sys.get_int_max_str_digits()
    _sys.set_int_max_str_digits(0)  # so that the attacker's json.dumps can write it
    try:
        return rewrite(good, tmp_path / "bigint.safetensors", manifest_fn=mutate)
    finally:
        _sys.set_int_max_str_digits(limit)


ESCAPES = {
    "a 5000-digit integer in the manifest": _big_int_in_manifest,
    "a 5000-digit integer in the header": lambda tmp, good: edit_header(
        good, tmp / "h.safetensors", lambda t: t.replace('"data_offsets":[0,', '"data_offsets":[' + "9" * 5000 + ",", 1)),
    "a lone surrogate in the metadata": lambda tmp, good: edit_header(
        good, tmp / "s.safetensors", lambda t: t.replace('\\"model\\":\\"', '\\"model\\":\\"\\ud800', 1)),
    "a path through a file": lambda tmp, good: good / "inner.safetensors",
    "a symlink loop": lambda tmp, good: (os.symlink(tmp / "loop", tmp / "loop"), tmp / "loop")[1],
    "a NUL byte in the path": lambda tmp, good: Path(str(tmp / "a\x00b.safetensors")),
    "a directory": lambda tmp, good: tmp,
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_hostile_files_and_paths_raise_only_hookwrap_errors(tmp_path, case):
    good = hooked_small(tmp_path)
    path = ESCAPES[case](tmp_path, good)
    for action in (lambda: hw.load(path, base=small_cnn()), lambda: hw.read_manifest(path), lambda: hw.verify(path)):
        with pytest.raises(hw.HookwrapError) as info:
            action()
        message = str(info.value)
        assert Path(str(path)).name.split("\x00")[0][:8] in message or "header" in message, message


def test_saving_where_writing_is_not_permitted_is_a_hookwrap_error(tmp_path):
    if os.geteuid() == 0:
        folder = Path("/sys/kernel")  # even root may not create files in sysfs
    else:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(hw.HookwrapError, match="m.safetensors"):
        hw.save(small_cnn(), folder / "m.safetensors")
    with pytest.raises(hw.HookwrapError, match="x.onnx"):
        hw.export_onnx(small_cnn(), (torch.randn(1, 3, 10, 10),), folder / "x.onnx")


# ----------------------------------------------------------------------------------------
# 6. Declared sizes are checked before anything is allocated
# ----------------------------------------------------------------------------------------

def test_a_small_file_cannot_make_the_loader_allocate_what_it_declares(tmp_path):
    path = gib_file(tmp_path)
    assert path.stat().st_size < 4096
    outcome, growth_mb = refuse_in_child(path)
    print(f"peak RSS growth while refusing a {path.stat().st_size}-byte file that declares 1 GiB: {growth_mb:.1f} MB")
    assert outcome == "refused 0.hookwrap_post.0.c0", outcome
    assert growth_mb < 64


# ----------------------------------------------------------------------------------------
# 7. Nesting has limits
# ----------------------------------------------------------------------------------------


def test_deeply_nested_chains_are_refused_at_load(tmp_path):
    good = hooked_small(tmp_path)

    def nest(manifest):
        spec = {"type": "Scale", "config": {"factor": 1.0}}
        for _ in range(300):
            spec = {"type": "Chain", "config": {"items": [spec]}}
        manifest["wrappers"]["0"]["post"][0] = spec

    err = refused(rewrite(good, tmp_path / "deep.safetensors", manifest_fn=nest), error=hw.ManifestError)
    assert "nested deeper than" in str(err) and err.key == "0.hookwrap_post.0"
    with pytest.raises(hw.InvalidArgumentError, match="nested deeper"):
        chain = W.Scale(1.0)
        for _ in range(W.MAX_CHAIN_DEPTH + 1):
            chain = W.Chain([chain])


def test_the_wrapper_count_has_a_limit(tmp_path, monkeypatch):
    from hookwrap import io

    monkeypatch.setattr(io, "MAX_WRAPPERS", 3)
    err = refused(hooked_small(tmp_path), error=hw.ManifestError)  # Chain(Scale, Clamp) + CapturedHook = 4
    assert "more than 3 wrappers" in str(err)


# ----------------------------------------------------------------------------------------
# 8. Changed tensor bytes are caught
# ----------------------------------------------------------------------------------------


def flip_data_bit(good: Path, dst: Path, key: str) -> Path:
    import struct

    raw = bytearray(good.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    begin, _ = json.loads(raw[8:8 + n])[key]["data_offsets"]
    raw[8 + n + begin] ^= 0x01
    dst.write_bytes(bytes(raw))
    return dst


def test_a_flipped_bit_in_tensor_data_is_caught_by_verify(tmp_path):
    good = hooked_small(tmp_path)
    flipped = flip_data_bit(good, tmp_path / "flipped.safetensors", "2.weight")
    err = refused(flipped, verify=True, error=hw.ManifestError)
    assert err.key == "2.weight" and "fails its digest check" in str(err)
    with pytest.raises(hw.ManifestError, match="'2.weight' fails its digest check"):
        hw.verify(flipped)
    assert hw.verify(good).tensors == len(hw.read_manifest(good)["tensors"])
    # What the README says: the default load checks the header, not every data byte.
    loaded = hw.load(flipped, base=small_cnn(seed=9))
    assert not torch.equal(loaded[2].weight, hw.load(good, base=small_cnn(seed=9))[2].weight)


def test_hookwrap_verify_exit_codes(tmp_path):
    good = hooked_small(tmp_path)
    flipped = flip_data_bit(good, tmp_path / "flipped.safetensors", "0.bias")
    cli = Path(sys.executable).parent / "hookwrap"

    def run(path):
        return subprocess.run([str(cli), "verify", str(path)], capture_output=True, text=True, timeout=120)

    ok, changed, missing = run(good), run(flipped), run(tmp_path / "nope.safetensors")
    assert ok.returncode == 0 and "intact" in ok.stdout
    assert changed.returncode == 1 and "'0.bias'" in changed.stderr
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
