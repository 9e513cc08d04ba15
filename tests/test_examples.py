"""The examples run as users run them, and the CI example works as a pytest file."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from helpers import ROOT


def run_example(name, tmp_path, *args, timeout=900):
    env = {**os.environ, "HOOKWRAP_OUT": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, *args] if args else [sys.executable, str(ROOT / "examples" / name)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_seed_dropout_journey_and_the_ci_parity_test(tmp_path):
    out = run_example("seed_dropout.py", tmp_path)
    assert "13 hook(s) on VGG" in out and "13 converted" in out
    assert "the reloaded model matches under the same seed: True" in out
    assert "random ops {'RandomUniformLike': 13}" in out and "parity PASSED" in out
    junit = tmp_path / "junit.xml"
    env_onnx = {"HOOKWRAP_ONNX": str(tmp_path / "seed.onnx")}
    os.environ.update(env_onnx)
    try:
        run_example("ci_parity_test.py", tmp_path, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    str(ROOT / "examples" / "ci_parity_test.py"), f"--junitxml={junit}")
    finally:
        for key in env_onnx:
            os.environ.pop(key)
    case = ET.parse(junit).getroot().find("testsuite/testcase")
    assert case is not None and case.find("failure") is None and case.find("skipped") is None
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["hookwrap.passed"] == "True" and props["hookwrap.mode"] == "statistical"
    assert "hookwrap.input0.linear_2.p_value" in props


def test_prune_and_export_shows_the_gain(tmp_path):
    out = run_example("prune_and_export.py", tmp_path)
    lines = {line.split("  ")[0].strip(): line for line in out.splitlines() if line.startswith("pruned")}
    raw = lines["pruned, exported as is"].split()
    baked = lines["pruned, baked by hookwrap"].split()
    raw_mb, baked_mb = float(raw[4].removesuffix("MB")), float(baked[4].removesuffix("MB"))
    assert baked_mb < 0.6 * raw_mb  # weight_orig and weight_mask no longer both shipped
    assert int(baked[5]) < int(raw[5]) and int(baked[6]) == 0  # fewer nodes, no Mul per pruned conv
    assert "baked: 20 pruned convs" in out and "parity PASSED" in out


def test_custom_converter_example(tmp_path):
    out = run_example("custom_converter.py", tmp_path)
    assert "TemperatureScale(t=1.5)" in out and "reloaded model matches the hooked one: True" in out


def test_the_ci_examples_gate_without_torch(tmp_path):
    """examples/ci: both CI files record in the training image and gate with the same command,
    in an image whose requirements hold no torch; that command runs with torch unimportable."""
    import shlex
    import textwrap

    import torch
    import yaml

    import hookwrap as hw

    folder = ROOT / "examples" / "ci"
    requirements = (folder / "requirements-gate.txt").read_text().lower()
    assert "onnxruntime" in requirements and "torch" not in requirements.replace("no torch", "")
    github = yaml.safe_load((folder / "github-actions.yml").read_text())
    gitlab = yaml.safe_load((folder / "gitlab-ci.yml").read_text())
    gh_gate = [s["run"] for s in github["jobs"]["gate"]["steps"] if "hookwrap check" in s.get("run", "")]
    gl_gate = [c for c in gitlab["gate"]["script"] if "hookwrap check" in c]
    assert gh_gate == gl_gate and len(gh_gate) == 1 and "--golden" in gh_gate[0]
    assert any("hookwrap record" in s.get("run", "") for s in github["jobs"]["record"]["steps"])
    from helpers import small_cnn

    model = small_cnn()
    model[0].register_forward_hook(lambda m, a, o: o * 2.0)
    x = torch.randn(2, 3, 10, 10)
    hw.export_onnx(model, (x,), tmp_path / "model.onnx")
    hw.record(model, (x,), tmp_path / "golden.npz")
    argv = shlex.split(gh_gate[0])[1:]
    blocked = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('torch', 'torchvision'):
                    raise ImportError(name)
        sys.meta_path.insert(0, Block())
        from hookwrap.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    proc = subprocess.run([sys.executable, "-c", blocked, *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "parity.xml").exists() and (tmp_path / "parity.json").exists()
