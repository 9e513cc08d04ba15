"""The examples run as users run them, and the CI example works as a pytest file."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from helpers import ROOT, requirement_closure


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
    # copied into another repository, as its docstring says: no examples package, no repository on sys.path
    copy = tmp_path / "deploy" / "test_parity.py"
    copy.parent.mkdir()
    copy.write_text((ROOT / "examples" / "ci_parity_test.py").read_text())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CI")}
    env.update(HOOKWRAP_ONNX=str(tmp_path / "seed.onnx"), HOOKWRAP_REFERENCE=f"{ROOT / 'examples' / 'seed_dropout.py'}:build")
    pytest_args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(copy)]
    proc = subprocess.run([*pytest_args, "-o", "junit_family=xunit1", "-W", "error::pytest.PytestWarning",
                           f"--junitxml={junit}"], cwd=copy.parent, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    missing = subprocess.run(pytest_args, cwd=copy.parent, capture_output=True, text=True, timeout=300,
                             env={**env, "HOOKWRAP_ONNX": str(tmp_path / "missing.onnx"), "CI": "true"})
    assert missing.returncode == 1 and "missing.onnx not found" in missing.stdout, missing.stdout[-3000:]
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
    import re
    import shlex
    import textwrap
    import tomllib

    import torch
    import yaml

    import hookwrap as hw

    folder = ROOT / "examples" / "ci"
    github = yaml.safe_load((folder / "github-actions.yml").read_text())
    gitlab = yaml.safe_load((folder / "gitlab-ci.yml").read_text())
    gh = {job: [s.get("run", "") for s in github["jobs"][job]["steps"]] for job in ("record", "gate")}
    gl = {job: list(gitlab[job]["script"]) for job in ("record", "gate")}
    for recipe in (gh, gl):
        commands = [c for job in recipe.values() for c in job]
        # hookwrap never comes from an index by name: one wheel, built in record, installed in both jobs
        assert not [c for c in commands if re.search(r"pip install (-\S+ )*[\"']?hookwrap\b", c)], commands
        assert any("pip wheel --no-deps -w dist" in c for c in recipe["record"])
        assert any("pip install dist/hookwrap-*.whl" in c and "[torch]" not in c and "pip check" in c
                   for c in recipe["gate"])
        assert any("--onnx model.onnx" in c for c in recipe["record"] if "hookwrap record" in c)
        # every file the gate reads is made by the record job and handed over
        made = " ".join(recipe["record"])
        assert "-o model.onnx" in made and "-o golden.npz" in made
    assert "dist/" in github["jobs"]["record"]["steps"][-1]["with"]["path"] and "dist/" in gitlab["record"]["artifacts"]["paths"]
    gh_gate = [c for c in gh["gate"] if "hookwrap check" in c]
    gl_gate = [c for c in gl["gate"] if "hookwrap check" in c]
    assert gh_gate == gl_gate and len(gh_gate) == 1 and "--golden" in gh_gate[0]
    # the gate's plain install (the wheel without extras) holds no torch
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in deps["dependencies"] if re.match(r"(torch|torchvision|onnxscript)\b", d)]
    assert {re.match(r"[\w-]+", d).group() for d in deps["optional-dependencies"]["torch"]} == {
        "torch", "torchvision", "onnxscript"}
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


def test_the_torch_free_install_in_a_fresh_venv_runs_the_gate(tmp_path):
    """`pip install hookwrap` (the wheel, no extras) in a new venv, from the wheels that make
    install keeps (no network): pip check is clean, torch is absent, and the gate runs as the
    CI recipes run it: check --golden with reports, verify and inspect of files; a command
    that needs torch says so and exits 2."""
    import json
    import textwrap

    import torch

    import hookwrap as hw

    wheels = ROOT / ".venv" / "gate-wheels"
    assert wheels.is_dir(), "make install keeps the gate's wheels in .venv/gate-wheels"
    dist = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "-w", str(dist), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    venv = tmp_path / "gate"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    proc = subprocess.run([*pip, "install", "--quiet", "--no-index", "--find-links", str(wheels),
                           *map(str, dist.glob("hookwrap-*.whl"))], capture_output=True, text=True, timeout=900,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "No broken requirements" in proc.stdout, proc.stdout + proc.stderr
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr

    from helpers import small_cnn

    model = small_cnn()
    model[0].register_forward_hook(lambda m, a, o: o * 2.0)
    x = torch.randn(2, 3, 10, 10)
    work = tmp_path / "work"
    work.mkdir()
    hw.export_onnx(model, (x,), work / "model.onnx", dynamic_batch=True)
    hw.record(model, (x,), work / "golden.npz", onnx=work / "model.onnx")
    hw.save(hw.convert(model, (x,)), work / "m.safetensors")
    cli = str(venv / "bin" / "hookwrap")

    def gate(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([cli, *args], cwd=work, capture_output=True, text=True, timeout=600, env=env)

    proc = gate("check", "model.onnx", "--golden", "golden.npz", "--strict", "--junit", "r.xml", "--json", "r.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((work / "r.json").read_text())["passed"] is True
    assert ET.parse(work / "r.xml").getroot().get("failures") == "0"
    proc = gate("verify", "m.safetensors")
    assert proc.returncode == 0 and "intact" in proc.stdout, proc.stderr
    proc = gate("inspect", "m.safetensors", "--json", "-")
    assert proc.returncode == 0 and json.loads(proc.stdout)["wrappers"], proc.stderr
    # a changed model fails the gate: an export of the model without its hook
    hw.export_onnx(small_cnn(), (x,), work / "plain.onnx", dynamic_batch=True)
    proc = gate("check", "plain.onnx", "--golden", "golden.npz")
    assert proc.returncode == 1 and "FAILED" in proc.stdout, proc.stdout + proc.stderr
    (work / "factories.py").write_text(textwrap.dedent("""
        import torch
        def build():
            return torch.nn.Identity()
    """))
    proc = gate("export", "factories.py:build", "-o", "x.onnx")
    assert proc.returncode == 2 and "pip install 'hookwrap[torch]'" in proc.stderr, proc.stderr


def test_pip_check_reports_nothing_about_hookwrap_torch(tmp_path):
    """In the development venv (hookwrap[torch,dev]), pip check's only complaints are about
    packages outside hookwrap[torch]'s requirement closure (steering-vectors, which make
    install adds without its dependencies for the tests)."""
    import re
    from importlib import metadata

    needed = requirement_closure([r for r in metadata.requires("hookwrap") or []
                       if "extra ==" not in r or 'extra == "torch"' in r], extras=("torch",))
    assert {"torch", "onnxscript", "onnxruntime", "safetensors"} <= needed
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    broken = {re.sub(r"[-_.]+", "-", line.split()[0]).lower() for line in proc.stdout.splitlines()
              if line.strip() and "No broken requirements" not in line}
    assert not broken & needed, proc.stdout
