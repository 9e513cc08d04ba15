"""The conformance harness: every allowlisted operator of a captured graph, run as a loaded
file runs it, over generated argument sets that include hostile ones (tests/graph_cases.py).

Each argument set is run in two child processes whose freed and newly allocated heap
memory glibc fills with two different patterns (MALLOC_PERTURB_; every allocation of the
harness's size comes from the heap). The harness asserts, for every case:

1. no input, host tensor or stored constant changed, byte for byte, and no output shares
   memory with one (the wrapper returns tensors of its own);
2. the outputs are fully determined: identical under both patterns, so no byte of them was
   left unwritten;
3. the child never died by a signal (a case that kills it is reported, and the child goes
   on from the next case);
4. every failure is a HookwrapError: refused at load (decoding or the static check) or
   raised when run.

``make test`` runs 12 argument sets per operator; ``benchmarks/bench_fuzz.py`` many more.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from graph_cases import all_cases, base_picks, ops

HERE = Path(__file__).parent
POISONS = (0x55, 0xAA)
PER_OP = 16  # argument sets per operator in make test: the base and a seeded sample of the rest


def run_children(seed: int, limit: int, poison: int, only: str = "") -> tuple[list[str], dict[int, dict], dict[int, str]]:
    """Run every case in children whose heap is poisoned with ``poison``; a child that dies
    by a signal is restarted after the case it was running. Returns (the case names,
    results by case number, the cases that ended a child with the signal's name)."""
    env = {**os.environ, "MALLOC_PERTURB_": str(poison), "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
           "OMP_NUM_THREADS": "1"}
    results: dict[int, dict] = {}
    crashes: dict[int, str] = {}
    names: dict[int, str] = {}
    start, total = 0, None
    while total is None or start < total:
        proc = subprocess.run([sys.executable, str(HERE / "graph_cases.py"), str(seed), str(limit), str(start), only],
                              env=env, capture_output=True, text=True, timeout=1800)
        last = None
        for line in proc.stdout.splitlines():
            record = json.loads(line)
            if "total" in record:
                total = record["total"]
            elif "start" in record:
                last = record["k"]
                names[last] = record["start"]
            else:
                results[record["k"]] = record
        if proc.returncode == 0:
            break
        if last is None or last in results:
            raise AssertionError(f"the harness child failed outside a case: {proc.stderr[-2000:]}")
        crashes[last] = signal.Signals(-proc.returncode).name if proc.returncode < 0 else f"exit {proc.returncode}"
        start = last + 1
    return [names.get(k, str(k)) for k in range(total or 0)], results, crashes


def harness(seed: int, limit: int, only: str = "") -> dict[str, list[str]]:
    """Run the harness under both poison patterns at once; the broken promises by kind, each
    naming the case, and the count of each status."""
    out: dict[int, tuple[list[str], dict[int, dict], dict[int, str]]] = {}

    def one(poison: int) -> None:
        out[poison] = run_children(seed, limit, poison, only)

    threads = [threading.Thread(target=one, args=(p,)) for p in POISONS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (names, a, crash_a), (_, b, crash_b) = out[POISONS[0]], out[POISONS[1]]
    found: dict[str, list[str]] = {"signal": [], "violation": [], "undetermined": [], "statuses": []}
    for k in sorted({*crash_a, *crash_b}):
        found["signal"].append(f"{names[k]}: {crash_a.get(k) or crash_b.get(k)}")
    for k, record in a.items():
        for v in record["violations"]:
            found["violation"].append(f"{names[k]}: {v}")
        other = b.get(k)
        if other and record["status"] == other["status"] == "ran" and record["digest"] != other["digest"]:
            found["undetermined"].append(names[k])
    found["statuses"] = [f"{s}: {n}" for s, n in Counter(r["status"] for r in a.values()).items()]
    return found


@pytest.mark.slow
def test_every_allowlisted_operator_keeps_the_four_promises_on_hostile_arguments():
    found = harness(seed=0, limit=PER_OP)
    counts = {k: int(v) for k, v in (s.split(": ") for s in found["statuses"])}
    assert counts.get("ran", 0) > len(ops()) * 3, found["statuses"]  # most cases really run
    for kind in ("signal", "violation", "undetermined"):
        assert not found[kind], f"{len(found[kind])} case(s) broke '{kind}': {found[kind][:20]}"


def test_every_allowlisted_operator_has_cases_that_load():
    """The harness reaches every operator: each has an ordinary argument set that passes the
    load's checks, from which the hostile ones are varied, and the cases are the same in
    every process."""
    assert [op for op in ops() if base_picks(op) is None] == []
    first, again = all_cases(0, 4), all_cases(0, 4)
    assert [(c.name, c.args, c.kwargs, c.tensors) for c in first] == [
        (c.name, c.args, c.kwargs, c.tensors) for c in again]
