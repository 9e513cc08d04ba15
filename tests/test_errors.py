"""The exception family and the package surface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hookwrap as hw
from hookwrap.errors import Blocker


def test_one_family_rooted_in_runtime_error():
    assert issubclass(hw.HookwrapError, RuntimeError)
    for cls in (hw.UnconvertibleHookError, hw.ManifestError, hw.ExportError, hw.ParityError, hw.InvalidArgumentError):
        assert issubclass(cls, hw.HookwrapError)


def test_unconvertible_lists_every_blocker():
    err = hw.UnconvertibleHookError([
        Blocker("features.0", "forward", "f", "it branches on data.", "remove the branch."),
        Blocker("", "forward_pre", "g", "it appends to a list.", "strip it."),
    ])
    text = str(err)
    assert text.splitlines()[0] == "2 hook(s) cannot be converted:"
    assert "features.0 [forward] f: it branches on data. Fix: remove the branch." in text
    assert "<root> [forward_pre] g: it appends to a list. Fix: strip it." in text
    assert len(err.blockers) == 2


def test_manifest_error_carries_the_key():
    err = hw.ManifestError("bad shape for 'fc.weight'", key="fc.weight")
    assert err.key == "fc.weight" and "fc.weight" in str(err)


def test_public_names_are_explicit_and_resolve():
    for name in hw.__all__:
        assert getattr(hw, name) is not None
    # the function, not the submodule, even after the submodule was imported
    import hookwrap.inventory  # noqa: F401

    assert callable(hw.inventory) and hw.inventory.__module__ == "hookwrap.plan"


def test_import_and_version_do_not_import_torch():
    code = "import sys, hookwrap; print(hookwrap.__version__); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [hw.__version__, "False"]


def test_console_script_prints_version():
    script = Path(sys.executable).parent / "hookwrap"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"hookwrap {hw.__version__}"
