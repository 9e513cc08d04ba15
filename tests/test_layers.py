"""The package's shape: modules import one way, lowest first (imports inside functions and
under TYPE_CHECKING count too), no function body is over 80 lines, and the parity gate's
modules never import torch. ``make lint`` checks the same order with import-linter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGE = ROOT / "hookwrap"

# Lowest first. A module may import only modules before it in this list.
ORDER = [
    "errors", "_version", "_defaults", "_fs", "_file", "_tree", "_npz", "_onnx", "_onnx_write", "_torch", "_diff", "_graph", "_graph_check", "_txn", "report",
    "wrappers", "hooks", "registry", "inventory", "capture", "plan", "strip", "convert", "io", "export",
    "parity_inputs", "compare", "parity_report", "reference", "golden", "parity", "bisect",
    "pytest_plugin", "cli", "__init__",
]
TORCH_FREE = ["errors", "_version", "_defaults", "_fs", "_file", "_npz", "_onnx", "_onnx_write", "parity_inputs", "compare", "parity_report", "golden",
              "parity"]


def modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PACKAGE.glob("*.py"))}


def hookwrap_imports(path: Path) -> set[str]:
    """Every hookwrap module that ``path`` imports, wherever the import statement is."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.module or "").startswith("hookwrap"):
                base = (node.module or "").removeprefix("hookwrap").lstrip(".")
                if base:
                    found.add(base.split(".")[0])
                else:  # "from . import x" names modules
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("hookwrap."):
                    found.add(alias.name.split(".")[1])
    return found & set(modules())


def test_every_module_has_a_place_in_the_order():
    assert sorted(modules()) == sorted(ORDER)


@pytest.mark.parametrize("name", ORDER)
def test_imports_run_one_way(name):
    rank = {m: i for i, m in enumerate(ORDER)}
    upward = sorted(m for m in hookwrap_imports(modules()[name]) if rank[m] >= rank[name] and m != name)
    assert not upward, f"hookwrap/{name}.py imports {upward}, which sit above it (or beside it) in the order"


def test_no_function_body_is_over_80_lines():
    long = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
                    first = node.body[1] if len(node.body) > 1 else first  # the docstring does not count
                lines = node.end_lineno - first.lineno + 1  # type: ignore[operator]
                if lines > 80:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_the_parity_gate_imports_no_torch():
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
            "            raise ImportError(f'{name} is blocked in this test')\n"
            "sys.meta_path.insert(0, Block())\n"
            + "".join(f"import hookwrap.{m}\n" for m in TORCH_FREE)
            + "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
