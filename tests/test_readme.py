"""The README is executable: its python blocks run in order, its hookwrap commands run
as given, so the README cannot drift from the code."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(README) if kind == lang]


def commands() -> list[str]:
    lines = [line.strip() for body in blocks("sh") for line in body.splitlines()]
    return [line for line in lines if line.startswith("hookwrap ")]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def workdir(tmp_path: Path) -> Path:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


def test_readme_names_the_two_commands_and_the_cli():
    sh = "\n".join(blocks("sh"))
    assert "make demo" in sh and "make test" in sh
    usage = "\n".join(blocks("text"))
    from hookwrap.cli import build_parser

    parser = build_parser()
    assert "`--debug`, before or after the subcommand" in README
    for command in ("inspect", "convert", "export", "check", "record", "verify"):
        assert f"hookwrap {command} " in usage
        sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        flags = {o for a in sub._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
        line = next(block for block in usage.split("hookwrap ")[1:] if block.startswith(command))
        for flag in flags - {"--output", "--debug"}:  # --debug: every command, said once below
            assert flag in line, f"README usage of {command} does not mention {flag}"


def test_readme_commands_and_python_blocks_run(tmp_path):
    cwd = workdir(tmp_path)
    hookwrap = Path(sys.executable).parent / "hookwrap"
    # The commands first: the python blocks use the files they write (seed.onnx).
    for command in commands():
        argv = [str(hookwrap), *shlex.split(command)[1:]]
        proc = subprocess.run(argv, cwd=cwd, env=env(), capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert (cwd / "parity.xml").exists() and (cwd / "seed.safetensors").exists()
    script = "\n\n".join(blocks("python"))
    (cwd / "readme_blocks.py").write_text(script)
    proc = subprocess.run([sys.executable, "readme_blocks.py"], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parity FAILED" in proc.stdout  # the stripped model fails, as the README says


DESCRIPTION = (ROOT / "DESCRIPTION.md").read_text()


def test_the_long_description_speaks_to_users_and_matches_the_code():
    """The package index shows DESCRIPTION.md: no relative links (they break there), no
    contributor set-up, and every command, flag and hw name it shows exists."""
    import tomllib

    import hookwrap as hw
    from hookwrap.cli import build_parser

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["readme"]["file"] == "DESCRIPTION.md"
    links = re.findall(r"\]\(([^)]+)\)", DESCRIPTION)
    assert all(link.startswith("https://") for link in links), links
    assert not re.search(r"\bmake (demo|test|install|bench|lint)\b", DESCRIPTION) and "wheel store" not in DESCRIPTION
    assert "CONTRIBUTING.md" in README and "make demo" in (ROOT / "CONTRIBUTING.md").read_text()
    names = set(re.findall(r"\bhw\.(\w+)", DESCRIPTION))
    assert names and names <= set(hw.__all__), names - set(hw.__all__)
    parser = build_parser()
    subs = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    shown = [line.strip() for kind, body in BLOCK.findall(DESCRIPTION) if kind == "sh"
             for line in body.splitlines() if line.strip().startswith("hookwrap ")]
    assert len(shown) == 3
    for line in shown:
        argv = shlex.split(line.split("#")[0])[1:]
        flags = {o for a in subs[argv[0]]._actions for o in a.option_strings}
        assert {a for a in argv if a.startswith("--")} <= flags, line
    assert f">={sys.version_info.major}.{sys.version_info.minor}" == project["requires-python"]
    assert "Python 3.11 or newer" in DESCRIPTION and "Python 3.11 or newer" in README


def test_twine_check_strict_passes_on_the_wheel_and_the_sdist(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "-o", str(tmp_path),
                           str(ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    built = sorted(p.name for p in tmp_path.iterdir())
    assert len(built) == 2 and built[0].endswith(".whl") and built[1].endswith(".tar.gz"), built
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, tmp_path.iterdir())],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.count("PASSED") == 2, proc.stdout + proc.stderr
    import tarfile

    with tarfile.open(next(tmp_path.glob("*.tar.gz"))) as sdist:
        files = {Path(n).name for n in sdist.getnames()}
    assert {"LICENSE", "DESCRIPTION.md", "SECURITY.md", "CONTRIBUTING.md"} <= files, files
