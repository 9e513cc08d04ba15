"""Golden files and the torch-free parity gate: hw.record, hookwrap record, check --golden,
warnings that make a verdict honest, and golden files as hostile input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, DropoutHook, small_cnn
from torch import nn

import hookwrap as hw
from hookwrap.golden import read_meta

TESTS = str(ROOT / "tests")
CLI = Path(sys.executable).parent / "hookwrap"

# Runs the hookwrap CLI in a process where importing torch or torchvision raises {error}.
_WITHOUT = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in ('torch', 'torchvision'):
                raise {error}(f"No module named {{name!r}}", name=name)
    sys.meta_path.insert(0, Block())
    from hookwrap.cli import main
    code = main(sys.argv[1:])
    assert 'torch' not in sys.modules
    sys.exit(code)
""")
GATE = _WITHOUT.format(error="ImportError")
# as pip leaves a plain install: ModuleNotFoundError
ABSENT = _WITHOUT.format(error="ModuleNotFoundError")


def gate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", GATE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def hooked_cnn() -> nn.Module:
    model = small_cnn()
    model[0].register_forward_hook(lambda m, a, o: o * 1.5)
    model[2].register_forward_pre_hook(lambda m, a: (torch.relu(a[0]) + 0.1,))
    return model


def mc_dropout_cnn() -> nn.Module:
    model = small_cnn()
    hook = DropoutHook(0.3)
    model.apply(hook.register_hook)  # the seed article's F.dropout2d(out, p, True, False)
    return model


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("golden")
    x = torch.randn(2, 3, 10, 10)
    hooked, stochastic = hooked_cnn(), mc_dropout_cnn()
    hw.export_onnx(hooked, (x,), folder / "good.onnx")
    hw.export_onnx(small_cnn(), (x,), folder / "lost.onnx")  # the same weights, hooks lost
    hw.export_onnx(stochastic, (x,), folder / "mc.onnx")
    hw.export_onnx(small_cnn(), (x,), folder / "mc_lost.onnx")  # dropout lost
    hw.record(hooked, (x,), folder / "golden.npz")
    hw.record(stochastic, (x,), folder / "mc_golden.npz", samples=32)
    return folder, x, hooked, stochastic


def test_a_golden_file_gives_the_verdict_of_the_model_itself(exports, tmp_path):
    folder, x, hooked, _ = exports
    live = hw.check_parity(hooked, folder / "good.onnx", (x,))
    golden = hw.check_parity(folder / "golden.npz", folder / "good.onnx")
    assert live and golden and golden.reference == "golden" and live.reference == "model"
    assert [c.max_abs_diff for c in golden.checks] == [c.max_abs_diff for c in live.checks]
    assert golden.inputs == live.inputs
    for onnx in ("lost.onnx",):
        live_bad = hw.check_parity(hooked, folder / onnx, (x,))
        golden_bad = hw.check_parity(folder / "golden.npz", folder / onnx)
        assert not live_bad and not golden_bad
        assert [c.max_abs_diff for c in golden_bad.checks] == [c.max_abs_diff for c in live_bad.checks]
    golden.to_json(tmp_path / "r.json")
    golden.to_junit(tmp_path / "r.xml")
    assert json.loads((tmp_path / "r.json").read_text())["reference"] == "golden"


def test_every_entry_reads_without_pickle_and_records_what_it_needs(exports):
    folder, *_ = exports
    with np.load(folder / "golden.npz", allow_pickle=False) as data:
        entries = {k: data[k] for k in data.files}
    meta = json.loads(entries.pop("__hookwrap_golden__").tobytes())
    assert meta["format"] == "hookwrap-golden" and meta["format_version"] == hw.golden.GOLDEN_VERSION == 2 and not meta["stochastic"]
    assert meta["hookwrap_version"] == hw.__version__ and meta["torch_version"]
    assert meta["atol"] == hw.compare.DEFAULT_ATOL and meta["rtol"] == hw.compare.DEFAULT_RTOL and meta["sets"] == 4
    assert meta["seed"] == 0 and meta["seeding"] == hw.compare.SEEDING and meta["random_inputs"] == 3
    assert meta["numpy_version"] == np.__version__
    assert [h["kind"] for h in meta["inventory"]["hooks"]] == ["forward", "forward_pre"]
    assert sorted(entries) == sorted([f"input/{i}/0" for i in range(4)] + [f"output/{i}/0" for i in range(4)])
    with np.load(folder / "mc_golden.npz", allow_pickle=False) as data:
        assert data["draw/0/0"].shape[0] == 32 and data["anchor/0/0"].shape[0] == 16


def test_the_gate_imports_no_torch_and_exits_as_the_contract_says(exports):
    folder, *_ = exports
    ok = gate("check", "good.onnx", "--golden", "golden.npz", "--junit", "r.xml", cwd=folder)
    assert ok.returncode == 0, ok.stderr
    lost = gate("check", "lost.onnx", "--golden", "golden.npz", cwd=folder)
    assert lost.returncode == 1 and "FAILED" in lost.stdout
    mc = gate("check", "mc.onnx", "--golden", "mc_golden.npz", cwd=folder)
    assert mc.returncode == 0 and "statistical" in mc.stdout, mc.stdout + mc.stderr
    mc_lost = gate("check", "mc_lost.onnx", "--golden", "mc_golden.npz", cwd=folder)
    assert mc_lost.returncode == 1 and "FAILED" in mc_lost.stdout


def test_hookwrap_record_writes_what_hw_record_writes(tmp_path):
    (tmp_path / "factories.py").write_text(textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {TESTS!r})
        from test_golden import hooked_cnn
        def build():
            torch.manual_seed(0)
            return hooked_cnn(), (torch.randn(2, 3, 10, 10),)
    """))
    proc = subprocess.run([str(CLI), "record", "factories.py:build", "-o", "out/g.npz", "--json", "-"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["sets"] == 4 and summary["stochastic"] is False and (tmp_path / "out" / "g.npz").exists()


def test_a_vacuous_check_warns_and_strict_fails(tmp_path):
    """Random weights can make outputs so small that no export could fail the default atol."""
    model = hooked_cnn()
    with torch.no_grad():
        model[5].weight.mul_(1e-7)
        model[5].bias.zero_()
    x = torch.randn(2, 3, 10, 10)
    hw.export_onnx(hw.strip(model), (x,), tmp_path / "lost.onnx")  # lost its hooks, and still passes
    report = hw.check_parity(model, tmp_path / "lost.onnx", (x,))
    assert report, "the check cannot fail: that is the point of the warning"
    assert len(report.warnings) == 1 and "vacuous check" in report.warnings[0]
    assert repr(report.checks[0].output) in report.warnings[0] and "pass atol=" in report.warnings[0]
    hw.record(model, (x,), tmp_path / "g.npz")
    strict = gate("check", "lost.onnx", "--golden", "g.npz", "--strict", cwd=tmp_path)
    assert strict.returncode == 1 and "vacuous check" in strict.stdout
    assert gate("check", "lost.onnx", "--golden", "g.npz", cwd=tmp_path).returncode == 0
    atol = float(report.warnings[0].split("pass atol=")[1].split()[0])
    assert not hw.check_parity(model, tmp_path / "lost.onnx", (x,), atol=atol)  # the suggested tolerance catches it


def test_too_few_draws_warn(exports):
    folder, x, _, stochastic = exports
    report = hw.check_parity(stochastic, folder / "mc.onnx", (x,), samples=4, random_inputs=0)
    assert any(w.startswith("too few draws") for w in report.warnings), report.warnings
    assert not [w for w in hw.check_parity(stochastic, folder / "mc.onnx", (x,), random_inputs=0).warnings
                if w.startswith("too few draws")]


def test_the_plugin_fixture_takes_a_golden_path(exports, tmp_path):
    folder, *_ = exports
    (tmp_path / "test_gate.py").write_text(textwrap.dedent(f"""
        def test_gate(hookwrap_parity):
            hookwrap_parity({str(folder / 'golden.npz')!r}, {str(folder / 'good.onnx')!r})
    """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_gate.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr


def _truncated(src: Path, dst: Path) -> Path:
    raw = src.read_bytes()
    dst.write_bytes(raw[: len(raw) // 2])
    return dst


def _object_array(src: Path, dst: Path) -> Path:
    np.savez(dst, **{"__hookwrap_golden__": np.array([{"x": 1}], dtype=object)})
    return dst


def _bad_meta(src: Path, dst: Path) -> Path:
    with np.load(src, allow_pickle=False) as data:
        entries = {k: data[k] for k in data.files}
    meta = json.loads(entries["__hookwrap_golden__"].tobytes())
    meta["sets"] = 10**9
    entries["__hookwrap_golden__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(dst, **entries)
    return dst


def _lying_size(src: Path, dst: Path) -> Path:
    """An entry whose .npy header declares far more data than the zip holds."""
    with zipfile.ZipFile(dst, "w") as archive:
        header = b"\x93NUMPY\x01\x00" + b"{'descr': '<f4', 'fortran_order': False, 'shape': (1073741824,), }".ljust(
            118) + b"\n"
        archive.writestr("input/0/0.npy", header + b"\x00" * 16)
    return dst


def _fifo(src: Path, dst: Path) -> Path:
    os.mkfifo(dst)
    return dst


def _meta_field(field: str, value: object):
    def make(src: Path, dst: Path) -> Path:
        with np.load(src, allow_pickle=False) as data:
            entries = {k: data[k] for k in data.files}
        meta = json.loads(entries["__hookwrap_golden__"].tobytes())
        meta[field] = value
        entries["__hookwrap_golden__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        np.savez(dst, **entries)
        return dst

    make.__name__ = f"_{field}_{str(value)[:20]}"
    return make


HOSTILE_META = [_meta_field("atol", {"output": -1.0}), _meta_field("atol", {"output": 1e300}),
                _meta_field("rtol", {str(i): 0.1 for i in range(2000)}), _meta_field("atol", "1e-4"),
                _meta_field("rtol", {"*": float("inf")}), _meta_field("seed", -1), _meta_field("seed", 2**64)]


@pytest.mark.parametrize("make", [_truncated, _object_array, _bad_meta, _lying_size, _fifo, *HOSTILE_META],
                         ids=lambda make: make.__name__)
def test_hostile_golden_files_are_one_line_errors(exports, tmp_path, make):
    folder, *_ = exports
    bad = make(folder / "golden.npz", tmp_path / "bad.npz")
    with pytest.raises(hw.HookwrapError):
        hw.check_parity(bad, folder / "good.onnx")
    proc = gate("check", str(folder / "good.onnx"), "--golden", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("hookwrap: error:") and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------
# The gate checks the interface it was recorded against (issue 26)
# ----------------------------------------------------------------------------------------


def renamed(src: Path, dst: Path, *, input: str | None = None, output: str | None = None) -> Path:  # noqa: A002
    """A copy of an ONNX file with its first input and/or output renamed (everything else equal)."""
    import onnx

    model = onnx.load(src)
    graph = model.graph
    for value, new in ((graph.input[0], input), (graph.output[0], output)):
        if new is None:
            continue
        old = value.name
        value.name = new
        for node in graph.node:
            node.input[:] = [new if n == old else n for n in node.input]
            node.output[:] = [new if n == old else n for n in node.output]
    onnx.save(model, dst)
    return dst


@pytest.fixture(scope="module")
def bound(tmp_path_factory):
    """A dynamic-batch export, a golden file recorded against it, and a static-batch export."""
    folder = tmp_path_factory.mktemp("bound")
    x = torch.randn(2, 3, 10, 10)
    model = hooked_cnn()
    hw.export_onnx(model, (x,), folder / "dyn.onnx", dynamic_batch=True)
    hw.export_onnx(model, (x,), folder / "static.onnx")
    meta = hw.record(model, (x,), folder / "g.npz", onnx=folder / "dyn.onnx")
    return folder, model, x, meta


def test_a_golden_file_binds_the_interface_and_the_live_check_s_inputs(bound):
    folder, model, x, meta = bound
    names = [i["name"] for i in meta["interface"]["inputs"]]
    assert meta["interface"]["inputs"][0]["shape"][0] is None and names == meta["input_names"]
    assert [s.startswith("random") for s in meta["sources"]].count(True) == 3
    live = hw.check_parity(model, folder / "dyn.onnx", (x,))
    golden = hw.check_parity(folder / "g.npz", folder / "dyn.onnx")
    assert live and golden
    assert golden.inputs == live.inputs  # the last set at another batch size, as the live check makes it
    assert len({tuple(s["shapes"][0]) for s in golden.inputs}) == 2
    assert [c.max_abs_diff for c in golden.checks] == [c.max_abs_diff for c in live.checks]


@pytest.mark.parametrize("change, expect", [
    ({"input": "images"}, "input names ['images'] against the recorded [{input!r}] (missing [{input!r}]; added ['images'])"),
    ({"output": "logits"}, "output names ['logits'] against the recorded [{output!r}]"),
])
def test_the_gate_fails_a_renamed_input_or_output(bound, tmp_path, change, expect):
    folder, _, _, meta = bound
    expect = expect.format(input=meta["interface"]["inputs"][0]["name"], output=meta["interface"]["outputs"][0]["name"])
    other = renamed(folder / "dyn.onnx", tmp_path / "renamed.onnx", **change)
    report = hw.check_parity(folder / "g.npz", other)
    assert not report and report.checks[0].output == "<interface>" and expect in report.checks[0].message
    proc = gate("check", str(other), "--golden", str(folder / "g.npz"), cwd=tmp_path)
    assert proc.returncode == 1 and "interface" in proc.stdout, proc.stdout + proc.stderr


def test_a_golden_file_without_a_bound_interface_still_compares_input_names(tmp_path):
    x = torch.randn(2, 3, 10, 10)
    model = hooked_cnn()
    hw.export_onnx(model, (x,), tmp_path / "m.onnx")
    hw.record(model, (x,), tmp_path / "g.npz")
    assert hw.check_parity(tmp_path / "g.npz", tmp_path / "m.onnx")
    report = hw.check_parity(tmp_path / "g.npz", renamed(tmp_path / "m.onnx", tmp_path / "r.onnx", input="images"))
    assert not report and "input names ['images'] against the recorded ['input']" in report.checks[0].message


def test_the_gate_fails_a_static_batch_export_against_a_dynamic_recording(bound, tmp_path):
    folder, *_ = bound
    proc = gate("check", str(folder / "static.onnx"), "--golden", str(folder / "g.npz"), "--json", "r.json",
                "--junit", "r.xml", cwd=tmp_path)
    # the golden sets at another batch size do not fit a static export: the check cannot run (exit 2),
    # and its reports say why
    assert proc.returncode == 2, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is False and "input set 3" in data["error"]
    import xml.etree.ElementTree as ET

    error = ET.parse(tmp_path / "r.xml").getroot().find("testsuite/testcase/error")
    assert error is not None and "input set 3" in error.get("message")


def test_a_dynamic_axis_made_fixed_is_named():
    from hookwrap.parity_inputs import interface_differences

    recorded = {"inputs": [{"name": "x", "type": "tensor(float)", "shape": [None, 3]}],
                "outputs": [{"name": "y", "type": "tensor(float)", "shape": [None, 5]}]}
    fixed = {"inputs": [{"name": "x", "type": "tensor(float)", "shape": [1, 3]}],
             "outputs": [{"name": "y", "type": "tensor(float16)", "shape": [1, 5]}]}
    found = interface_differences(recorded, fixed)
    assert found == ["axis 0 of input 'x' was dynamic and is fixed at 1 (an export without the dynamic axis)",
                     "output 'y' is tensor(float16), recorded tensor(float)"]
    assert interface_differences(recorded, recorded) == []


def test_a_looser_tolerance_needs_override_tolerance(bound, tmp_path):
    folder, *_ = bound
    with pytest.raises(hw.InvalidArgumentError, match="looser than the golden file's"):
        hw.check_parity(folder / "g.npz", folder / "dyn.onnx", atol=1.0)
    assert hw.check_parity(folder / "g.npz", folder / "dyn.onnx", atol=1e-6)  # stricter is always allowed
    refused = gate("check", "dyn.onnx", "--golden", "g.npz", "--atol", "1", cwd=folder)
    assert refused.returncode == 2 and "--override-tolerance" in refused.stderr
    allowed = gate("check", "dyn.onnx", "--golden", "g.npz", "--atol", "1", "--override-tolerance",
                   "--json", str(tmp_path / "r.json"), cwd=folder)
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads((tmp_path / "r.json").read_text())["tolerance_override"] is True


def test_reports_are_written_when_the_check_cannot_run(exports, tmp_path):
    folder, *_ = exports
    proc = gate("check", str(folder / "good.onnx"), "--golden", str(folder / "mc_golden.npz"), "--samples", "64",
                "--json", "r.json", "--junit", "r.xml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "record it again" in json.loads((tmp_path / "r.json").read_text())["error"]
    assert (tmp_path / "r.xml").read_text().count("<error") == 1


def test_the_fixture_takes_strict(tmp_path):
    model = hooked_cnn()
    with torch.no_grad():
        model[5].weight.mul_(1e-7)  # outputs so small that the check is vacuous: a warning
        model[5].bias.zero_()
    x = torch.randn(2, 3, 10, 10)
    hw.export_onnx(model, (x,), tmp_path / "m.onnx")
    hw.record(model, (x,), tmp_path / "g.npz")
    (tmp_path / "test_gate.py").write_text(textwrap.dedent("""
        import pytest

        def test_lenient(hookwrap_parity):
            assert hookwrap_parity("g.npz", "m.onnx").warnings

        def test_strict(hookwrap_parity):
            with pytest.raises(pytest.fail.Exception, match="vacuous check"):
                hookwrap_parity("g.npz", "m.onnx", strict=True)
    """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_gate.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout + proc.stderr


def without_torch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ABSENT, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_command_that_needs_torch_says_how_to_install_it(tmp_path):
    """Where torch is not installed (ModuleNotFoundError, as pip leaves it), export and the
    live check name the extra to install, in one line, exit 2."""
    absent = ABSENT
    (tmp_path / "factories.py").write_text("import torch\ndef build():\n    return None\n")
    for args in (["export", "factories.py:build", "-o", "m.onnx"], ["inspect", "factories.py:build"]):
        proc = subprocess.run([sys.executable, "-c", absent, *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert f"hookwrap {args[0]} needs torch" in proc.stderr and "pip install 'hookwrap[torch]'" in proc.stderr


@pytest.mark.parametrize("options", [{"seed": -1}, {"seed": 2**63}, {"samples": 3}, {"samples": True}])
def test_record_refuses_bad_draw_options_before_any_work(tmp_path, options):
    with pytest.raises(hw.InvalidArgumentError, match="seed|samples"):
        hw.record(hooked_cnn(), (torch.randn(2, 3, 10, 10),), tmp_path / "g.npz", **options)
    assert not (tmp_path / "g.npz").exists()


def test_verify_and_inspect_of_files_need_no_torch(tmp_path):
    """The plain install verifies a saved file's digests (exit 0, or 1 on one changed byte)
    and inspects a saved file and a golden file, with torch not installed."""
    model = hooked_cnn()
    x = torch.randn(2, 3, 10, 10)
    hw.save(hw.convert(model, (x,)), tmp_path / "m.safetensors")
    hw.record(model, (x,), tmp_path / "g.npz")
    proc = without_torch("verify", "m.safetensors", "--json", "-", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["intact"] is True and result["wrappers_checked"] is False
    assert result["tensors"] == len(hw.read_manifest(tmp_path / "m.safetensors")["tensors"])
    assert hw.verify(tmp_path / "m.safetensors").to_dict()["wrappers_checked"] is True  # with torch: all of it
    proc = without_torch("inspect", "m.safetensors", "--json", "-", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["wrappers"] == hw.read_manifest(tmp_path / "m.safetensors")["wrappers"]
    proc = without_torch("inspect", "m.safetensors", cwd=tmp_path)
    assert proc.returncode == 0 and "converted" in proc.stdout and "0.hookwrap_post" not in proc.stderr, proc.stderr
    proc = without_torch("inspect", "g.npz", "--json", "r/g.json", cwd=tmp_path)
    assert proc.returncode == 0 and "stochastic" in proc.stdout, proc.stderr
    assert json.loads((tmp_path / "r" / "g.json").read_text())["sets"] == read_meta(tmp_path / "g.npz")["sets"]
    data = bytearray((tmp_path / "m.safetensors").read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor
    (tmp_path / "m.safetensors").write_bytes(bytes(data))
    proc = without_torch("verify", "m.safetensors", cwd=tmp_path)
    assert proc.returncode == 1 and "CHANGED" in proc.stderr and "fails its digest check" in proc.stderr, proc.stderr
