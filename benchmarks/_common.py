"""Helpers shared by the benchmark scripts: interleaved timing and JSON output."""

from __future__ import annotations

import gc
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))
# A benchmark that is stopped (SIGTERM) unwinds like one that ends, so that its temporary
# folders go too: bench_io's, in /dev/shm, holds a gigabyte of RAM. The handler can run
# inside a finalizer, where Python ignores the exit (seen once, in a tensor's __del__), so
# it first restores the default action: a second SIGTERM then always stops the script.


def _stop(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _stop)


# A small launcher between the bench and the measured command: a child's ru_maxrss starts
# at the high-water mark of the process it was forked from, so forking from the bench (which
# holds torch and models) would report the bench's memory, not the command's.
_LAUNCH = """import os, subprocess, sys, threading, time
peaks = {"RssAnon": 0, "RssFile": 0}
def sample(pid, done):
    path = f"/proc/{pid}/status"
    while not done.wait(0.01):
        try:
            with open(path) as status:
                for line in status:
                    key = line.split(":")[0]
                    if key in peaks:
                        peaks[key] = max(peaks[key], int(line.split()[1]) * 1024)
        except (OSError, ValueError, IndexError):
            pass
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
done = threading.Event()
sampler = threading.Thread(target=sample, args=(proc.pid, done), daemon=True)
sampler.start()
_, status, usage = os.wait4(proc.pid, 0)
seconds = time.perf_counter() - start
done.set()
sampler.join()
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_maxrss * 1024} {seconds} {peaks['RssAnon']} {peaks['RssFile']}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(argv: list[str], cwd: Path, ok: tuple[int, ...] = (0,), env: dict[str, str] | None = None
                 ) -> tuple[float, int]:
    """A command's wall time (seconds) and its own peak RSS (bytes), in a fresh process."""
    seconds, peak, _ = run_profiled(argv, cwd, ok, env)
    return seconds, peak


def run_profiled(argv: list[str], cwd: Path, ok: tuple[int, ...] = (0,), env: dict[str, str] | None = None
                 ) -> tuple[float, int, dict[str, int]]:
    """:func:`run_measured`, and the peaks of the command's private (``RssAnon``) and
    file-backed (``RssFile``: mapped files, reclaimable page cache) memory, sampled every
    10 ms from /proc (a peak shorter than that can be missed; the total is exact)."""
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as log:
        figures = Path(tmp) / "peak"
        proc = subprocess.run([sys.executable, "-S", "-c", _LAUNCH, str(figures), *argv], cwd=cwd, stdout=log,
                              stderr=log, env=env)
        if proc.returncode not in ok:
            log.seek(0)
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: "
                               f"{log.read()[-2000:].decode(errors='replace')}")
        peak, seconds, anon, file = figures.read_text().split()
    return float(seconds), int(peak), {"private": int(anon), "file": int(file)}


def timed(fn: Callable[[], Any]) -> float:
    """Wall time of one ``fn()``. Garbage is collected first, outside the timing, so that a
    call does not pay for collecting what the call before it left (the dynamo exporter
    leaves a lot: on resnet18 it moved single exports by up to 30 %)."""
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_times(candidate: Callable[[], Any], baseline: Callable[[], Any], *, rounds: int = 15,
                      inner: int = 5, warmup: int = 2) -> tuple[list[float], list[float]]:
    """Per-call times of ``candidate`` and ``baseline`` over interleaved rounds (the order
    alternates each round), for :func:`ratio_interval`."""
    for _ in range(warmup):
        candidate()
        baseline()
    a_times: list[float] = []
    b_times: list[float] = []
    for r in range(rounds):
        order = [(candidate, a_times), (baseline, b_times)]
        if r % 2:
            order.reverse()
        for fn, sink in order:
            sink.append(timed(lambda fn=fn: [fn() for _ in range(inner)]) / inner)
    return a_times, b_times


def interleaved_ratio(candidate: Callable[[], Any], baseline: Callable[[], Any], *, rounds: int = 15,
                      inner: int = 5, warmup: int = 2) -> dict[str, float]:
    """Median over rounds of (candidate time / baseline time), A and B alternating so that
    machine noise hits both alike. Each round times ``inner`` calls of each."""
    for _ in range(warmup):
        candidate()
        baseline()
    ratios, a_times, b_times = [], [], []
    for r in range(rounds):
        order = [(candidate, a_times), (baseline, b_times)]
        if r % 2:
            order.reverse()
        got = {}
        for fn, sink in order:
            t = timed(lambda: [fn() for _ in range(inner)]) / inner
            sink.append(t)
            got[id(sink)] = t
        ratios.append(got[id(a_times)] / got[id(b_times)])
    return {
        "ratio": statistics.median(ratios),
        "candidate_s": statistics.median(a_times),
        "baseline_s": statistics.median(b_times),
        **spread(ratios),
    }


def spread(values: list[float]) -> dict[str, float]:
    """Min and max of a figure's rounds, reported next to its median."""
    return {"min": round(min(values), 4), "max": round(max(values), 4), "rounds": len(values)}


def figure(name: str, value: float, limit: float | None, *, better: str = "lower", **extra: Any) -> dict[str, Any]:
    passed = None if limit is None else (value <= limit if better == "lower" else value >= limit)
    return {"name": name, "value": round(value, 4), "limit": limit, "pass": passed, **extra}


def emit(benchmark: str, figures: list[dict[str, Any]]) -> None:
    print(json.dumps({"benchmark": benchmark, "figures": figures}, indent=2))


def _bootstrap(statistic: Callable[[list[int]], float], n: int, *, resamples: int, level: float,
               seed: int) -> tuple[float, float]:
    """The ``level`` percentile interval of ``statistic`` over ``resamples`` resamplings
    (with replacement) of the indices ``0..n-1``."""
    import random

    rng = random.Random(seed)
    draws = sorted(statistic([rng.randrange(n) for _ in range(n)]) for _ in range(resamples))
    low, high = draws[int((1 - level) / 2 * resamples)], draws[int((1 + level) / 2 * resamples) - 1]
    return round(low, 4), round(high, 4)


def ratio_interval(candidate: list[float], baseline: list[float], *, resamples: int = 2000, level: float = 0.95,
                   seed: int = 0) -> dict[str, float]:
    """The ratio of medians candidate / baseline, with a paired bootstrap interval: rounds
    (each a candidate and a baseline timed side by side) are resampled with replacement.
    The interval's width is what the figure can resolve on this machine: a gated figure
    whose interval is wider than its margin to the limit is a defect of the bench."""
    low, high = _bootstrap(lambda picks: statistics.median(candidate[i] for i in picks)
                           / statistics.median(baseline[i] for i in picks),
                           len(candidate), resamples=resamples, level=level, seed=seed)
    return {"ratio": statistics.median(candidate) / statistics.median(baseline), "low": low, "high": high,
            "rounds": len(candidate), "candidate_s": statistics.median(candidate),
            "baseline_s": statistics.median(baseline)}


def median_interval(samples: list[float], *, resamples: int = 2000, level: float = 0.95,
                    seed: int = 0) -> dict[str, float]:
    """The median of ``samples`` (seconds of one thing, timed repeatedly), with a bootstrap
    interval: for a figure with a limit but no baseline to divide by."""
    low, high = _bootstrap(lambda picks: statistics.median(samples[i] for i in picks), len(samples),
                           resamples=resamples, level=level, seed=seed)
    return {"value": statistics.median(samples), "low": low, "high": high, "rounds": len(samples)}


def interval_figure(name: str, result: dict[str, float], limit: float | None, **extra: Any) -> dict[str, Any]:
    """A figure from :func:`ratio_interval` or :func:`median_interval`: its value, interval,
    and whether the interval is narrow enough to resolve the limit (``resolves``: the limit
    lies outside it)."""
    resolves = None if limit is None else not (result["low"] <= limit <= result["high"])
    value = result["ratio"] if "ratio" in result else result["value"]
    fields = {"interval": [result["low"], result["high"]], "rounds": result["rounds"], "resolves": resolves}
    return figure(name, value, limit, **{**extra, **fields})
