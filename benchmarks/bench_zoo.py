"""Issue 8: sweep the torchvision classification zoo through the whole journey.

Every classification model that builds with ``weights=None`` and has at most 150 M
parameters, at the smallest input size it accepts (see ``tests/zoo/sweep.py``): attach,
convert, save, load, export, parity. Two worker processes (one per core), one thread
each. Writes ``benchmarks/zoo.md`` (the table) and prints JSON figures: how many models
were swept, how many passed, and the wall time.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from _common import emit, figure  # first: it puts the project and tests/ on sys.path
from zoo.sweep import Row, plan, sweep_one, table


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _run(name: str, params: int, folder: str) -> dict:
    return sweep_one(name, params, Path(folder) / name).to_dict()


def main() -> None:
    start = time.perf_counter()
    names = sys.argv[1:] or None
    keep, left_out = plan(names)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp, ProcessPoolExecutor(
        max_workers=2, initializer=_worker_init
    ) as pool:
        futures = {pool.submit(_run, name, params, tmp): name for name, params in keep}
        for done, future in enumerate(as_completed(futures), 1):
            row = Row(**future.result())
            rows.append(row)
            status = "pass" if row.passed else f"FAIL at {row.failed_step}: {row.reason[:120]}"
            steps = " ".join(f"{k} {v:.1f}s" for k, v in row.steps.items())
            print(f"[{done}/{len(keep)}] {row.model}: {status} ({steps})", file=sys.stderr, flush=True)
    rows.sort(key=lambda r: r.model)
    seconds = time.perf_counter() - start
    report = [
        "# torchvision classification zoo sweep",
        "",
        f"{len(rows)} models swept, {sum(r.passed for r in rows)} passed, in {seconds / 60:.1f} minutes "
        f"(2 processes, 1 thread each). Steps: attach Dropout2d(0.2, always=True) to every Conv2d (Scale(0.5) "
        f"to every Linear without one), convert, save, load (checked equal under a seed), export (dynamo, dynamic "
        f"batch), parity (statistical: 16 draws per side; the example and a random input at batch 3).",
        "",
        table(rows),
        "",
        "## Left out",
        "",
        *[f"- {name}: {why}" for name, why in left_out],
        "",
    ]
    out = Path(__file__).parent / "zoo.md"
    out.write_text("\n".join(report))
    (Path(__file__).parent / "zoo.json").write_text(json.dumps([r.to_dict() for r in rows], indent=1))
    failed = [r for r in rows if not r.passed]
    emit("zoo", [
        figure("zoo_models_swept", len(rows), None, left_out=[n for n, _ in left_out]),
        figure("zoo_models_passed", sum(r.passed for r in rows), len(rows), better="higher",
               failed={r.model: f"{r.failed_step}: {r.reason}" for r in failed}),
        figure("zoo_sweep_minutes", seconds / 60, 40.0),
    ])


if __name__ == "__main__":
    main()
