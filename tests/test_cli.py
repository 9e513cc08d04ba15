"""The command line, run as users run it: a subprocess per command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

HOOKWRAP = str(Path(sys.executable).parent / "hookwrap")

FACTORIES = textwrap.dedent("""
    import torch
    from torch import nn

    def _net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()

    def build():
        model = _net()
        model[0].register_forward_hook(lambda m, a, o: torch.clamp(o * 1.5, -2, 2))
        model[3].register_forward_hook(lambda m, a, o: o * o.sigmoid())
        return model, (torch.randn(2, 3, 8, 8),)

    def plain():
        return _net()

    def stochastic():
        model = _net()
        model[0].register_forward_hook(lambda m, a, o: torch.nn.functional.dropout2d(o, 0.25, True, False))
        return model, (torch.randn(2, 3, 8, 8),)

    def no_example():
        return build()[0]

    def raises():
        raise ValueError("no GPU here")

    def not_a_model():
        return 42

    other = "just a string"
""")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    (folder / "factories.py").write_text(FACTORIES)
    return folder


def run(args, cwd, ok=(0,)):
    proc = subprocess.run([HOOKWRAP, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode in ok, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_inspect_table_and_json(workspace):
    proc = run(["inspect", "factories.py:build"], workspace)
    assert "2 hook(s) on Sequential" in proc.stdout and "convert" in proc.stdout
    data = json.loads(run(["inspect", "factories:build", "--json", "-"], workspace).stdout)  # module form
    assert data["count"] == 2 and [h["path"] for h in data["hooks"]] == ["0", "3"]


def test_convert_export_check_succeed(workspace):
    proc = run(["convert", "factories.py:build", "-o", "m.safetensors"], workspace)
    assert "conversion report" in proc.stdout and "m.safetensors" in proc.stdout
    run(["convert", "factories.py:build", "-o", "new/folder/m.safetensors"], workspace)  # made like mkdir -p
    assert (workspace / "new" / "folder" / "m.safetensors").is_file()
    summary = json.loads(run(["convert", "factories.py:build", "-o", "m.safetensors", "--json", "-"], workspace).stdout)
    assert summary["report"]["counts"] == {"converted": 2}
    # --json takes a path on every command: the file is written and the tables still shown
    proc = run(["convert", "factories.py:build", "-o", "m.safetensors", "--json", "out/s.json"], workspace)
    assert "conversion report" in proc.stdout
    assert json.loads((workspace / "out" / "s.json").read_text()) == summary
    proc = run(["export", "factories.py:build", "-o", "m.onnx", "--dynamic-batch", "--check"], workspace)
    assert "parity PASSED" in proc.stdout and "opset" in proc.stdout
    export = json.loads(run(["export", "factories.py:build", "-o", "m.onnx", "--json", "-"], workspace).stdout)
    assert export["nodes"] > 0 and export["files"][-1].endswith("m.onnx")
    proc = run(["check", "m.onnx", "--reference", "factories.py:build", "--json", "r.json", "--junit", "r.xml"],
               workspace)
    assert "parity PASSED" in proc.stdout
    assert json.loads((workspace / "r.json").read_text())["passed"] is True
    proc = run(["check", "m.onnx", "--reference", "factories.py:build", "--json", "-"], workspace)
    assert json.loads(proc.stdout)["passed"] is True  # stdout holds the JSON alone
    assert ET.parse(workspace / "r.xml").getroot().find("testsuite").get("failures") == "0"
    # --weights loads the converted file into a freshly built reference
    proc = run(["check", "m.onnx", "--reference", "factories.py:build", "--weights", "m.safetensors"], workspace)
    assert "parity PASSED" in proc.stdout


def test_parity_failure_exits_1(workspace):
    # an ONNX file of the model without its hooks, checked against the hooked model
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, '.'); import torch, hookwrap as hw; "
         "from factories import plain; hw.export_onnx(plain(), (torch.randn(2, 3, 8, 8),), 'plain.onnx')"],
        cwd=workspace, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    proc = run(["check", "plain.onnx", "--reference", "factories.py:build", "--junit", "fail.xml"], workspace, ok=(1,))
    assert "parity FAILED" in proc.stdout and "would pass with atol" in proc.stdout
    failure = ET.parse(workspace / "fail.xml").getroot().find("testsuite/testcase/failure")
    assert failure is not None and "max_abs_diff" in failure.text


def test_statistical_check_shows_progress_and_passes(workspace):
    run(["export", "factories.py:stochastic", "-o", "s.onnx"], workspace)
    proc = run(["check", "s.onnx", "--reference", "factories.py:stochastic", "--samples", "16"], workspace)
    assert "parity (statistical, model reference)" in proc.stdout and "parity PASSED" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["inspect", "nosuchpackage.models:build"], "cannot import module 'nosuchpackage.models'"),
    (["inspect", "factories.py:nope"], "has no attribute 'nope'"),
    (["inspect", "factories.py:raises"], "the factory raised ValueError: no GPU here"),
    (["inspect", "factories.py:not_a_model"], "the factory returned int; expected an nn.Module"),
    (["inspect", "missing.py:build"], "file 'missing.py' does not exist"),
    (["export", "factories.py:no_example", "-o", "x.onnx"], "export needs example inputs"),
    (["convert", "factories.py:build", "-o", "m.pt"], "--output must end with .safetensors"),
    (["check", "nothere.onnx", "--reference", "factories.py:build"], "'nothere.onnx': cannot open the ONNX file: No such file"),
    (["check", "m.onnx", "--reference", "factories.py:build", "--inputs", "bad.npz"], "inputs file"),
    (["check", "m.onnx", "--reference", "factories.py:build", "--weights", "wrong.safetensors"], "wrong.safetensors"),
    (["check", "m.onnx"], "one of the arguments --reference --golden is required"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_input_exits_2_with_one_line(workspace, args, message):
    if not (workspace / "m.onnx").exists():
        run(["export", "factories.py:build", "-o", "m.onnx"], workspace)
    (workspace / "bad.npz").write_bytes(b"this is not an npz")
    if not (workspace / "wrong.safetensors").exists():
        subprocess.run([sys.executable, "-c", "import torch; from safetensors.torch import save_file; "
                        "save_file({'0.weight': torch.zeros(2, 2)}, 'wrong.safetensors')"], cwd=workspace, check=True)
    proc = run(args, workspace, ok=(2,))
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hookwrap: error:") and message in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def test_debug_shows_the_traceback(workspace):
    for args in (["--debug", "inspect", "factories.py:raises"], ["inspect", "factories.py:raises", "--debug"]):
        proc = run(args, workspace, ok=(2,))
        assert "Traceback" in proc.stderr and "ValueError: no GPU here" in proc.stderr, args


def test_a_misspelled_option_points_at_the_subcommand_help(workspace):
    proc = run(["check", "m.onnx", "--golden", "g.npz", "--atoll", "1"], workspace, ok=(2,))
    assert "unrecognized arguments: --atoll 1 (see hookwrap check --help)" in proc.stderr


def test_every_option_and_argument_has_help():
    from hookwrap.cli import _subcommands, build_parser

    for name, command in _subcommands(build_parser()).items():
        for action in command._actions:
            assert action.help, f"hookwrap {name}: {action.option_strings or action.dest} has no help"


def test_version_and_help_are_fast():
    for args in (["--version"], ["--help"], ["check", "--help"]):
        best = min(_timed([HOOKWRAP, *args]) for _ in range(3))
        assert best < 1.0, (args, best)  # the benchmark measures the 0.3 s figure precisely
    out = subprocess.run([HOOKWRAP, "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("hookwrap ")


def _timed(argv) -> float:
    start = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True)
    return time.perf_counter() - start


def test_npz_inputs(workspace):
    if not (workspace / "m.onnx").exists():
        run(["export", "factories.py:build", "-o", "m.onnx"], workspace)
    import onnx

    name = onnx.load(str(workspace / "m.onnx"), load_external_data=False).graph.input[0].name
    np.savez(workspace / "in.npz", **{name: np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)})
    proc = run(["check", "m.onnx", "--reference", "factories.py:build", "--inputs", "in.npz"], workspace)
    assert "parity PASSED: 1 input(s)" in proc.stdout



def run_on_terminal(args, cwd):
    """Run the CLI with a pseudo-terminal as its output, as a person at a shell sees it."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([HOOKWRAP, *args], cwd=cwd, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL,
                            env={**os.environ, "TERM": "xterm", "COLUMNS": "120"})
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closes when the command ends
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=600) == 0, out.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


def test_long_steps_show_progress_on_a_terminal_only(workspace):
    """save (convert), export and verify draw a rich progress bar on a terminal; piped or
    under --json - they print none."""
    out = run_on_terminal(["convert", "factories.py:build", "-o", "tty.safetensors"], workspace)
    assert "saving tty.safetensors" in out and "━" in out
    out = run_on_terminal(["verify", "tty.safetensors"], workspace)
    assert "verifying digests" in out and "intact" in out
    out = run_on_terminal(["export", "factories.py:build", "-o", "tty.onnx"], workspace)
    assert "converting and exporting" in out and "3/3" in out
    proc = run(["verify", "tty.safetensors"], workspace)
    assert "verifying" not in proc.stdout + proc.stderr and "━" not in proc.stdout + proc.stderr
    proc = run(["convert", "factories.py:build", "-o", "tty.safetensors", "--json", "-"], workspace)
    json.loads(proc.stdout)  # the JSON alone
