"""``make bench``: run every benchmark, write ``benchmarks/results.json``, print a table.

Each ``bench_*.py`` script runs in its own process and prints JSON figures; this script
collects them into ``{"machine": {...}, "commit": ..., "figures": [{benchmark, name, value,
limit, pass, ...}, ...]}``: the machine (cores, CPU model, memory, Python, torch) and the
commit are recorded so that a figure can be traced to where it was measured. Exit code 1
if any figure misses its limit (or a script fails).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# convert last: its first-call figure is the absolute time of fresh processes, the figure
# the host's speed at serving fresh memory moves most (see COLD_FRACTION).
ORDER = ["cli", "io", "journey", "gate", "power", "bisect", "growth", "memory", "fuzz", "zoo", "timm", "transformers",
         "hooklibs", "convert"]
MINUTES_LIMIT = 125  # bench_memory (2 and 4 GB stacks, 3 runs, and the 10 GB journey) takes about 25 of them


def machine() -> dict:
    """What this machine is: the figures depend on it."""
    import os
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    total = _meminfo_bytes("MemTotal")
    memory = total // (1 << 20) if total is not None else None
    versions = subprocess.run([sys.executable, "-c", "import torch, onnxruntime; print(torch.__version__, "
                               "onnxruntime.__version__)"], capture_output=True, text=True).stdout.split()
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_mb": memory, "python": platform.python_version(),
            "torch": versions[0] if versions else None, "onnxruntime": versions[1] if len(versions) > 1 else None,
            "platform": platform.platform()}


def commit() -> str | None:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE, capture_output=True,
                           text=True).stdout.strip()
    return (proc.stdout.strip() + ("+uncommitted" if dirty else "")) if proc.returncode == 0 else None


def _cpu_idle() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of all CPUs since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


def _meminfo_bytes(key: str) -> int | None:
    """``key``'s line of /proc/meminfo (``MemTotal``, ``MemAvailable``), in bytes."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return None
    return next((int(line.split()[1]) * 1024 for line in meminfo.read_text().splitlines()
                 if line.startswith(f"{key}:")), None)


# Fresh memory on this kind of virtual machine is served by the host: the guest hands every
# free 2 MB block back to it at once (virtio-balloon free page reporting, order 9, no
# delay), so the first write to a page faults to the host, and writing memory cannot warm
# it for the next process. How fast the host serves those faults varies: about 1.8 GB/s
# usually, 0.4 GB/s right after ``make install`` (gigabytes of venv written through the
# page cache), recovering over some 20 minutes. The first ``hw.convert`` in a fresh process
# (a 553 MB copy of vgg16 and its activations, all fresh memory) took 2.46 s [2.28, 2.85]
# at 0.8 GB/s and 1.3 to 1.5 s at 1.6 GB/s or more. So the scripts whose figures are
# absolute times of fresh processes run last, and every script waits until fresh memory is
# at least COLD_FRACTION as fast as the fastest seen in this run (COLD_WAIT seconds at most
# in all: a host that stays slow is measured as it is, and the figures show it).
COLD_FRACTION = 0.75
COLD_WAIT = 1200.0
COLD_PROBE_EVERY = 20.0


def memory_rate(size: int = 1 << 30, probes: int = 3) -> float:
    """How fast fresh memory is, in GB/s: the best of ``probes`` writes of ``size`` bytes
    (at most a quarter of the available memory), each allocated, written once and freed.
    The best, because one probe can be slowed by anything else the machine does."""
    available = _meminfo_bytes("MemAvailable")
    size = min(size, available // 4) if available else size
    rates = []
    for _ in range(probes):
        start = time.perf_counter()
        block = bytearray(size)  # zero-filled: every page is written
        del block
        rates.append(size / 1e9 / max(time.perf_counter() - start, 1e-9))
    return max(rates)


def settle(fastest: float, cold_budget: float, max_wait: float = 120.0) -> dict[str, float]:
    """Let the machine go quiet before a benchmark: flush pending writes (a run from a fresh
    clone starts right after ``make install`` wrote gigabytes of venv), wait while fresh
    memory is slower than ``COLD_FRACTION`` of ``fastest`` (GB/s, the best
    :func:`memory_rate` of this run so far; at most ``cold_budget`` seconds, probing every
    ``COLD_PROBE_EVERY``), then wait, at most ``max_wait`` seconds, for a second in which
    the CPUs are at most 10 % busy. Returns the seconds it all took, the seconds spent
    on memory (flushing, probing and waiting), and the memory rate when the benchmark starts (GB/s)."""
    start = time.perf_counter()
    os.sync()
    rate = memory_rate()
    while rate < COLD_FRACTION * fastest and time.perf_counter() - start < cold_budget:
        time.sleep(COLD_PROBE_EVERY)
        rate = memory_rate()
    cold = time.perf_counter() - start
    while Path("/proc/stat").exists() and time.perf_counter() - start - cold < max_wait:
        idle0, total0 = _cpu_idle()
        time.sleep(1.0)
        idle1, total1 = _cpu_idle()
        if total1 > total0 and 1 - (idle1 - idle0) / (total1 - total0) <= 0.10:
            break
    return {"seconds": round(time.perf_counter() - start, 1), "waited_for_memory_s": round(cold, 1),
            "memory_gb_per_s": round(rate, 2)}


def main() -> int:
    only = sys.argv[1:]
    results, settling, started = [], [], time.perf_counter()
    measured = commit()  # before the sweeps rewrite their tables (tracked files)
    for name in ORDER:
        if only and name not in only:
            continue
        script = HERE / f"bench_{name}.py"
        settled = settle(max((s["memory_gb_per_s"] for s in settling), default=0.0),
                         COLD_WAIT - sum(s["waited_for_memory_s"] for s in settling))
        settling.append({"benchmark": name, **settled})
        fastest = max(s["memory_gb_per_s"] for s in settling)
        print(f"== {script.name} (after {settled['seconds']:.0f} s of settling, {settled['waited_for_memory_s']:.0f} "
              f"of them for memory; fresh memory at {settled['memory_gb_per_s']:.1f} GB/s, the run's best "
              f"{fastest:.1f})", file=sys.stderr, flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        # The figures are the last thing a script prints; libraries may print before them.
        start_json = proc.stdout.rfind('{\n  "benchmark"')
        text = proc.stdout[start_json:] if start_json >= 0 else ""
        if proc.returncode != 0 or not text:
            results.append({"benchmark": name, "name": f"{name}_ran", "value": proc.returncode, "limit": 0,
                            "pass": False})
            continue
        try:
            figures = json.loads(text)["figures"]
        except (ValueError, KeyError) as exc:
            print(f"   {script.name} printed no readable figures: {exc}", file=sys.stderr, flush=True)
            results.append({"benchmark": name, "name": f"{name}_ran", "value": -1, "limit": 0, "pass": False})
            continue
        for fig in figures:
            results.append({"benchmark": name, **fig})
            if fig.get("limit") is not None:  # the gated figures as they come, not only at the end
                interval = f" {fig['interval']}" if fig.get("interval") else ""
                print(f"   {fig['name']} = {fig['value']:.4g}{interval} (limit {fig['limit']:g}): "
                      f"{'pass' if fig['pass'] else 'FAIL'}", file=sys.stderr, flush=True)
        print(f"   {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    if not only:
        minutes = (time.perf_counter() - started) / 60
        results.append({"benchmark": "run_all", "name": "make_bench_minutes", "value": round(minutes, 2),
                        "limit": MINUTES_LIMIT, "pass": minutes <= MINUTES_LIMIT})
    if not results:
        print(f"no benchmark matches {only}; known: {', '.join(ORDER)}", file=sys.stderr)
        return 2
    record = {"machine": machine(), "commit": measured, "benchmarks": only or ORDER, "settling": settling,
              "figures": results}
    (HERE / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    width = max(len(r["name"]) for r in results)
    print(f"{'figure':{width}}  {'value':>12}  {'limit':>8}  pass")
    for r in results:
        limit = "-" if r["limit"] is None else f"{r['limit']:g}"
        verdict = {True: "yes", False: "NO", None: "-"}[r["pass"]]
        print(f"{r['name']:{width}}  {r['value']:>12.4g}  {limit:>8}  {verdict}")
    print(f"total {(time.perf_counter() - started) / 60:.1f} min; wrote {HERE / 'results.json'}")
    return 0 if all(r["pass"] is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
