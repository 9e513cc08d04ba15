"""Issues 8 and 12: fuzz the loader with hypothesis (``tests/fuzzing.py``): at least 2,000
mutated files (header bytes, manifests with recomputed digests, tensor tables, tensor
data, the length prefix, random captured graphs drawn from all of ``torch.ops.aten``,
random tree specs). Every case must load (with allowlisted ops only, then run) or raise a
HookwrapError subclass, within 5 s, importing nothing new and touching no file. Prints
the number of cases, outcomes and the slowest case, and the peak RSS growth of a child
process refusing a ~2 KB file that declares a 1 GiB constant (limit 64 MB)."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from _common import emit, figure  # first: it puts the project and tests/ on sys.path
from crafting import gib_file, refuse_in_child
from fuzzing import canary_folder, check_case, mutated, seed_file
from helpers import small_cnn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hookwrap as hw

CASES = 2500  # issue 12 asks for 2,000 or more


def main() -> None:
    outcomes: Counter = Counter()
    slowest = 0.0
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        raw_path = seed_file(folder)
        hw.load(raw_path, base=small_cnn())(torch.randn(2, 3, 10, 10))
        raw = raw_path.read_bytes()
        canary = canary_folder(folder)

        @settings(max_examples=CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(st.data())
        def case(data):
            nonlocal slowest
            kind, payload = data.draw(mutated(raw, canary))
            start = time.perf_counter()
            try:
                outcomes[(kind, check_case(folder / "case.safetensors", payload, canary))] += 1
            except AssertionError as exc:
                failures.append(f"{kind}: {exc}")
                outcomes[(kind, "VIOLATION")] += 1
            except Exception as exc:  # an escape: exactly what the fuzzer looks for
                failures.append(f"{kind}: {type(exc).__name__}: {exc}")
                outcomes[(kind, "ESCAPED")] += 1
            slowest = max(slowest, time.perf_counter() - start)

        start = time.perf_counter()
        case()
        seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = gib_file(Path(tmp))
        file_bytes = path.stat().st_size
        outcome, growth_mb = refuse_in_child(path)
    total = sum(outcomes.values())
    emit("fuzz", [
        figure("refuse_1gib_declaration_peak_rss_growth_mb", growth_mb, 64.0, outcome=outcome,
               file_bytes=file_bytes),
        figure("fuzz_cases", total, CASES * 0.8, better="higher",
               outcomes={f"{k}/{o}": n for (k, o), n in sorted(outcomes.items())}, seconds=round(seconds, 1)),
        figure("fuzz_violations", len(failures), 0, examples=failures[:5]),
        figure("fuzz_slowest_case_seconds", slowest, 5.0),
    ])


if __name__ == "__main__":
    main()
