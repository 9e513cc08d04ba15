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

    good = hooked_small(tmp_path)
    monkeypatch.setattr(io, "MAX_WRAPPERS", 3)
    err = refused(good, error=hw.ManifestError)  # Chain(Scale, Clamp) + CapturedHook = 4
    assert "more than 3 wrappers" in str(err)
    model = small_cnn()
    model[0].register_forward_hook(lambda m, a, o: torch.clamp(o * 1.5, -2, 2))
    model[5].register_forward_hook(lambda m, a, o: o * o.mean())
    with pytest.raises(hw.HookwrapError, match="save would write a file that load refuses.*more than 3 wrappers"):
        hw.save(hw.convert(model, (torch.randn(2, 3, 10, 10),)), tmp_path / "over.safetensors")
    assert not (tmp_path / "over.safetensors").exists()


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


# ----------------------------------------------------------------------------------------
# 7. Running a loaded model is memory-safe (issue 23): allowlisted operators with arguments
#    the attacker chose. tests/test_graph.py runs every operator over generated hostile
#    arguments; these are the red team's own cases, each refused at load.
# ----------------------------------------------------------------------------------------

HOST = "0.hookwrap_post.0"


def host_reading(tmp_path):
    """A file whose captured hook reads its module's bias: graph input 0 is the Linear's
    output, input 1 the host's bias."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(inplace=True)).eval()
    model[0].register_forward_hook(lambda m, a, o: o + m.bias)
    path = tmp_path / "host.safetensors"
    hw.save(hw.convert(model, (torch.randn(2, 4),)), path)
    return path


def host_base():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(inplace=True)).eval()


def host_attack(tmp_path, nodes, outputs):
    good = host_reading(tmp_path)

    def mutate(manifest):
        graph = manifest["wrappers"]["0"]["post"][0]["config"]["graph"]
        graph["nodes"], graph["outputs"] = nodes, outputs

    return rewrite(good, tmp_path / "attack.safetensors", manifest_fn=mutate)


def refused_host(path, *needles):
    base = host_base()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(hw.ManifestError) as info:
        hw.load(path, base=base)
    assert info.value.key == HOST and all(n in str(info.value) for n in needles), str(info.value)
    assert state_equal(base.state_dict(), state)
    return info.value


META_INDEX = {"op": "aten.full.default", "args": [{"list": [2]}, 0],
              "kwargs": {"dtype": {"dtype": "int64"}, "device": {"device": "meta"}}}


@pytest.mark.parametrize("nodes,op", [
    ([META_INDEX, {"op": "aten.index_select.default", "args": [{"n": 0}, 1, {"n": 2}], "kwargs": {}}],
     "aten.full.default"),
    ([{"op": "aten.full.default", "args": [{"list": []}, 1.0], "kwargs": {"device": {"device": "meta"}}},
      {"op": "aten.fill.Tensor", "args": [{"n": 0}, {"n": 2}], "kwargs": {}}], "aten.full.default"),
    ([{"op": "aten.zeros.default", "args": [{"list": [2, 4]}], "kwargs": {"device": {"device": "cuda"}}}],
     "aten.zeros.default"),
])
def test_a_graph_may_name_only_the_cpu_device(tmp_path, nodes, op):
    """A meta-device index made an allowlisted op return a CPU tensor that was never written:
    the output carried freed heap memory. Only the CPU is a device a file may name."""
    err = refused_host(host_attack(tmp_path, nodes, [{"n": 2 + len(nodes) - 1}]), op, "CPU")
    assert "graph node 0" in str(err)


@pytest.mark.parametrize("node,needle", [
    ({"op": "aten.pad.default", "args": [{"n": 0}, {"list": [2, -5]}, "circular"], "kwargs": {}}, "circular"),
    ({"op": "aten.instance_norm.default", "args": [{"p": 0}, None, None, {"n": 1}, {"n": 1}, True, 0.1, 1e-5, False],
      "kwargs": {}}, "running statistics"),
    ({"op": "aten.avg_pool2d.default", "args": [{"p": 0}, {"list": [1, 1]}, {"list": []}, {"list": [0, 0]},
                                                False, True, -1], "kwargs": {}}, "divisor_override"),
])
def test_arguments_that_leave_memory_unwritten_or_write_into_arguments_are_refused(tmp_path, node, needle):
    """Circular padding with negative pads left its output unwritten; instance_norm wrote its
    running statistics into the host's bias (through an alias, every call); integer pooling
    with a divisor override trapped. Refused at load, before anything runs."""
    view = {"op": "aten.view.default", "args": [{"n": 0}, {"list": [1, 2, 2, 2]}], "kwargs": {}}
    fixed = {**node, "args": [{"n": 2} if a == {"p": 0} else a for a in node["args"]]}
    refused_host(host_attack(tmp_path, [view, fixed], [{"n": 3}]), node["op"], needle)


@pytest.mark.parametrize("op,extra", [
    ("aten.div.Tensor_mode", {"rounding_mode": "trunc"}), ("aten.div.Tensor_mode", {"rounding_mode": "floor"}),
    ("aten.floor_divide.default", {}), ("aten.remainder.Tensor", {}), ("aten.fmod.Tensor", {}),
])
def test_integer_division_is_refused_at_load(tmp_path, op, extra):
    """INT64_MIN / -1 kills the process with SIGFPE; the static check knows the dtypes."""
    to_int = {"op": "aten._to_copy.default", "args": [{"n": 0}], "kwargs": {"dtype": {"dtype": "int64"}}}
    divide = {"op": op, "args": [{"n": 2}, {"n": 2}], "kwargs": extra}
    refused_host(host_attack(tmp_path, [to_int, divide], [{"n": 3}]), op, "integer")


def test_a_graph_output_never_aliases_a_host_tensor_or_a_constant(tmp_path):
    """The graph returns detach(bias); torchvision's ReLU(inplace=True) downstream then
    zeroed the negative entries of the module's own bias on every call."""
    bad = host_attack(tmp_path, [{"op": "aten.detach.default", "args": [{"n": 1}], "kwargs": {}}], [{"n": 2}])
    model = hw.load(bad, base=host_base())
    bias = model[0].bias.detach().clone()
    assert (bias < 0).any()  # so a write through the alias would show
    with torch.no_grad():
        out = model(torch.randn(2, 4))
    assert torch.equal(model[0].bias, bias) and torch.equal(out, torch.relu(bias))


@pytest.mark.parametrize("nodes", [
    [{"op": "aten.full.default", "args": [{"list": [2**40]}, 1.0], "kwargs": {}}],
    [{"op": "aten.repeat.default", "args": [{"n": 0}, {"list": [2**14, 2**14]}], "kwargs": {}}],
    [{"op": "aten.view.default", "args": [{"n": 0}, {"list": [1, 2, 2, 2]}], "kwargs": {}},
     {"op": "aten.upsample_nearest2d.vec", "args": [{"n": 2}, None, {"list": [4e4, 4e4]}], "kwargs": {}}],
    [{"op": "aten.sym_size.int", "args": [{"n": 0}, 0], "kwargs": {}},
     {"op": "operator.mul", "args": [{"n": 2}, 2**20], "kwargs": {}},
     {"op": "aten.new_zeros.default", "args": [{"n": 0}, {"list": [{"n": 3}, {"n": 3}]}], "kwargs": {}}],
    [{"op": "aten.linspace.default", "args": [0, 1, 2**34], "kwargs": {}}],
])
def test_sizes_that_come_from_the_file_are_bounded_in_bytes(tmp_path, nodes):
    """Scalar sizes, repeats, upsampling scales and size arithmetic: the static check at load
    finds what each node would allocate without allocating anything."""
    err = refused_host(host_attack(tmp_path, nodes, [{"n": 2 + len(nodes) - 1}]), "allocates")
    assert "bytes" in str(err)


def test_a_size_that_depends_on_tensor_values_is_refused(tmp_path):
    nodes = [{"op": "aten._to_copy.default", "args": [{"n": 0}], "kwargs": {"dtype": {"dtype": "int64"}}},
             {"op": "aten.sum.default", "args": [{"n": 2}], "kwargs": {}},
             {"op": "aten.item.default", "args": [{"n": 3}], "kwargs": {}},
             {"op": "aten.zeros.default", "args": [{"list": [{"n": 4}]}], "kwargs": {}}]
    refused_host(host_attack(tmp_path, nodes, [{"n": 5}]), "depends on tensor values")


def test_a_header_shape_that_overflows_with_a_zero_size_is_refused(tmp_path):
    """A zero-element shape whose other sizes multiply past int64 escaped as a raw RuntimeError
    from verify and load, so hookwrap verify exited 2."""
    good = hooked_small(tmp_path)
    bad = edit_header(good, tmp_path / "zero.safetensors",
                      lambda t: t.replace('"2.bias":{"dtype":"F32","shape":[8]',
                                          '"2.bias":{"dtype":"F32","shape":[0,4611686018427387903,1048576]', 1))
    for action in (lambda: hw.verify(bad), lambda: hw.load(bad, base=small_cnn())):
        with pytest.raises(hw.ManifestError, match="2.bias"):
            action()
    cli = Path(sys.executable).parent / "hookwrap"
    proc = subprocess.run([str(cli), "verify", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "2.bias" in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------
# 8. The torch-free gate: golden files and ONNX files from outside (issue 23)
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    folder = tmp_path_factory.mktemp("golden")
    model, x = small_cnn(), torch.randn(2, 3, 10, 10)
    hw.export_onnx(model, (x,), folder / "m.onnx")
    hw.record(model, (x,), folder / "golden.npz")
    return folder


def _entries(path: Path) -> dict:
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _write_zip(dst: Path, entries: dict, big: tuple[str, int, int] | None = None) -> Path:
    """An .npz of ``entries`` (arrays) plus, if given, ``big`` = (name, bytes, compression):
    an entry of that many zero bytes behind a .npy header, written in chunks."""
    import io
    import zipfile

    import numpy as np

    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as archive:
        if big is not None:
            name, nbytes, method = big
            head = io.BytesIO()
            np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False,
                                                         "shape": (nbytes // 4,)})
            info = zipfile.ZipInfo(f"{name}.npy")
            info.compress_type = method
            with archive.open(info, "w", force_zip64=True) as out:
                out.write(head.getvalue())
                chunk = bytes(1 << 20)
                for _ in range(nbytes >> 20):
                    out.write(chunk)
        for key, value in entries.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, value, allow_pickle=False)
            archive.writestr(f"{key}.npy", buf.getvalue())
    return dst


GATE_MEMORY = textwrap.dedent("""
    import resource, sys
    import hookwrap as hw
    folder = {folder!r}
    hw.check_parity(folder + "/golden.npz", folder + "/m.onnx")  # warm up every import
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        hw.check_parity({bad!r}, folder + "/m.onnx")
        print("passed")
    except hw.HookwrapError as exc:
        print("refused:", str(exc).replace(chr(10), " "))
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
""")


def gate_memory(folder: Path, bad: Path) -> tuple[str, float]:
    code = GATE_MEMORY.format(folder=str(folder), bad=str(bad))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    outcome, growth = proc.stdout.strip().split("\n")[-2:]
    return outcome, float(growth)


def test_a_golden_bzip2_bomb_is_refused_before_it_inflates(golden, tmp_path):
    """A kilobyte of bzip2 that really inflates to 256 MiB grew peak memory by gigabytes."""
    import zipfile

    entries = _entries(golden / "golden.npz")
    entries.pop("input/0/0")
    bomb = _write_zip(tmp_path / "bomb.npz", entries, ("input/0/0", 256 << 20, zipfile.ZIP_BZIP2))
    assert bomb.stat().st_size < 64 << 10
    outcome, growth = gate_memory(golden, bomb)
    assert outcome.startswith("refused:") and "'input/0/0'" in outcome and "method 12" in outcome, outcome
    assert growth < 32, growth


def test_a_golden_entry_that_does_not_fit_the_model_is_refused_before_it_is_read(golden, tmp_path):
    """Deflate inflates at most about 1,000 times, so a 256 KiB entry can hold 256 MiB: its
    header is checked against the ONNX inputs (and the metadata first) before a byte is read."""
    import zipfile

    entries = _entries(golden / "golden.npz")
    entries.pop("input/0/0")
    big = _write_zip(tmp_path / "big.npz", entries, ("input/0/0", 256 << 20, zipfile.ZIP_DEFLATED))
    outcome, growth = gate_memory(golden, big)
    assert outcome.startswith("refused:") and "input set 0" in outcome and "shape" in outcome, outcome
    assert growth < 32, growth
    meta = json.loads(entries["__hookwrap_golden__"].tobytes())
    meta["sets"] = 10**9
    import numpy as np

    entries["__hookwrap_golden__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    entries.pop("output/0/0")
    broken = _write_zip(tmp_path / "meta.npz", entries, ("output/0/0", 256 << 20, zipfile.ZIP_DEFLATED))
    outcome, growth = gate_memory(golden, broken)
    assert outcome.startswith("refused:") and "counts are out of range" in outcome and growth < 32, outcome


@pytest.mark.parametrize("field,text", [("rtol", "1e300"), ("atol", "Infinity"), ("rtol", "NaN"),
                                        ("atol", "-1.0"), ("rtol", "true")])
def test_golden_tolerances_are_finite_and_bounded(golden, tmp_path, field, text):
    """A golden file's own rtol of 1e300 (or a non-standard Infinity) made check --golden
    --strict pass a model off by a factor of 1000, with no warning."""
    import numpy as np

    entries = _entries(golden / "golden.npz")
    raw = entries["__hookwrap_golden__"].tobytes().decode()
    meta = json.loads(raw)
    meta[field] = 0.5  # a placeholder, replaced as text: json.dumps would not write Infinity
    doctored = json.dumps(meta).replace(f'"{field}": 0.5', f'"{field}": {text}')
    entries["__hookwrap_golden__"] = np.frombuffer(doctored.encode(), dtype=np.uint8)
    bad = _write_zip(tmp_path / "tol.npz", entries)
    with pytest.raises(hw.ManifestError) as info:
        hw.check_parity(bad, golden / "m.onnx")
    assert field in str(info.value) or "Infinity" in str(info.value) or "NaN" in str(info.value)


def test_the_golden_gate_raises_only_hookwrap_errors_when_onnxruntime_fails(tmp_path):
    """An input set that fits the ONNX signature but not the graph made onnxruntime's own
    Fail escape from check_parity."""
    import numpy as np
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "r.onnx"))
    meta = {"format": "hookwrap-golden", "format_version": 1, "stochastic": False, "sets": 1, "inputs": 1,
            "outputs": 1, "sources": ["crafted"], "seed": 0, "atol": 1e-4, "rtol": 1e-3}
    entries = {"__hookwrap_golden__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
               "input/0/0": np.zeros(5, np.float32), "output/0/0": np.zeros((2, 3), np.float32)}
    bad = _write_zip(tmp_path / "g.npz", entries)
    with pytest.raises(hw.HookwrapError, match="onnxruntime failed to run"):
        hw.check_parity(bad, tmp_path / "r.onnx")


def test_external_data_inside_local_functions_is_checked(tmp_path):
    """check_external_data walked the main graph and its subgraphs, not the subgraphs of
    nodes inside model.functions."""
    from onnx import TensorProto, helper

    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 64)
    (tmp_path / "m").mkdir()
    weights = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    weights.ClearField("float_data")
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../outside.bin"), ("offset", "0"), ("length", "16")):
        weights.external_data.add(key=key, value=value)
    branch = helper.make_graph([helper.make_node("Identity", ["w"], ["z"])], "branch", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])], [weights])
    cond = helper.make_node("If", ["c"], ["o"], then_branch=branch, else_branch=branch)
    function = helper.make_function("local", "f", ["c"], ["o"], [cond], [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("f", ["c"], ["y"], domain="local")], "g",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, functions=[function],
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    path = tmp_path / "m" / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(hw.HookwrapError, match="outside.bin"):
        hw.check_parity(small_cnn(), path, (torch.zeros(()),))


def test_inspect_of_a_hostile_file_prints_no_escape_or_markup(tmp_path):
    """hookwrap inspect FILE shows text the file chose (action details, the model name):
    terminal escapes and rich markup in it are printed as inert characters."""
    import subprocess
    import sys
    from pathlib import Path

    from crafting import hooked_small, rewrite

    good = hooked_small(tmp_path)

    def poison(manifest):
        manifest["model"] = "Net\x1b]8;;file:///etc/passwd\x1b\\[link=https://evil]click[/link]"
        for action in manifest["converted"]:
            action["detail"] = "\x1b[2J[bold red]wiped[/bold red]\x07"

    rewrite(good, tmp_path / "evil.safetensors", manifest_fn=poison)
    cli = Path(sys.executable).parent / "hookwrap"
    proc = subprocess.run([str(cli), "inspect", str(tmp_path / "evil.safetensors")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "TERM": "xterm", "FORCE_COLOR": "1", "COLUMNS": "400"})
    assert proc.returncode == 0, proc.stderr
    assert "\x1b]8" not in proc.stdout and "\x1b[2J" not in proc.stdout and "\x07" not in proc.stdout
    assert "[bold red]wiped[/bold red]" in proc.stdout and "[link=https://evil]" in proc.stdout
