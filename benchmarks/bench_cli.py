"""Issue 6 figure: ``hookwrap --version`` and ``hookwrap --help`` answer in at most 0.3 s,
because torch, onnx and onnxruntime are imported lazily. Median wall time of 15 runs of
each, as a subprocess (what a user waits for), with its bootstrap interval."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _common import emit, interval_figure, median_interval, spread, timed

HOOKWRAP = str(Path(sys.executable).parent / "hookwrap")


def main() -> None:
    figures = []
    for args in (["--version"], ["--help"]):
        subprocess.run([HOOKWRAP, *args], capture_output=True, check=True)  # warm the file cache
        times = [timed(lambda: subprocess.run([HOOKWRAP, *args], capture_output=True, check=True)) for _ in range(15)]
        figures.append(interval_figure(f"cli_{args[0].strip('-')}_seconds", median_interval(times), 0.3,
                                       **spread(times)))
    emit("cli", figures)


if __name__ == "__main__":
    main()
