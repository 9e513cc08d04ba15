"""Sweep timm, one architecture per family, through the whole hookwrap journey.

For every timm module, the model with the fewest parameters (on the meta device; timm's
``test_*`` models left out; at most 20 M parameters), at the smallest input it accepts
(see ``tests/zoo/timm_sweep.py``): attach, convert, save, load, export, parity; and the
``features_only=True, feature_cls="hook"`` journey (convert refuses, export inline,
parity on every feature map) on those with at most 3 M parameters where timm supports it. Two worker processes (one per core),
one thread each; each model is timeboxed. Writes ``benchmarks/timm.md`` and
``benchmarks/timm.json`` and prints JSON figures: models swept, passed, features journeys
passed and the wall time.

    python benchmarks/bench_timm.py                 # all families
    python benchmarks/bench_timm.py resnet convnext # some families (writes no files)
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import emit, figure  # first: it puts the project and tests/ on sys.path
from zoo import timm_sweep as ts

HERE = Path(__file__).parent
HARD_SECONDS = ts.TIMEBOX + 180  # a worker stuck past its soft timebox is killed (faulthandler)
MIN_SWEPT = 60  # issue 13: at least 60 architectures, one per family
MIN_FEATURES = 10  # issue 13: features_only for at least 10 of them
FIRST_RUN = {"passed": 61, "features": 14}  # for comparison; the guard is that every failure is the exporter's
MINUTES_LIMIT = 25.0


# ----------------------------------------------------------------------------- a pool that survives a hung model


@dataclass
class Task:
    key: str
    fn: Callable[..., Any]
    args: tuple


def _worker_init(hard: float, marks: str) -> None:
    """One thread per worker: torch's, and onnxruntime's (hookwrap's sessions use
    onnxruntime's default pool, a spinning thread per core, which would make the two
    workers fight over the two cores)."""
    import onnxruntime as ort
    import torch

    torch.set_num_threads(1)

    class OneThread(ort.SessionOptions):
        def __init__(self) -> None:
            super().__init__()
            self.intra_op_num_threads = 1
            self.inter_op_num_threads = 1

    ort.SessionOptions = OneThread
    os.environ["HOOKWRAP_SWEEP_HARD"] = str(hard)
    os.environ["HOOKWRAP_SWEEP_MARKS"] = marks


def _call(key: str, fn: Callable[..., Any], args: tuple) -> Any:
    """Run ``fn(*args)`` with a mark file naming it; past the hard limit faulthandler's
    watchdog thread ends the process even if it is stuck in C code."""
    mark = Path(os.environ["HOOKWRAP_SWEEP_MARKS"]) / key
    mark.write_text(str(os.getpid()))
    faulthandler.dump_traceback_later(float(os.environ["HOOKWRAP_SWEEP_HARD"]), exit=True)
    try:
        return fn(*args)
    finally:
        faulthandler.cancel_dump_traceback_later()
        mark.unlink(missing_ok=True)


def run_pool(first: list[Task], then: Callable[[Task, Any], list[Task]], *, hard: float, marks: Path,
             workers: int = 2) -> None:
    """Run tasks in ``workers`` processes; ``then(task, result_or_exception)`` may add tasks.

    If a worker dies (killed after ``hard`` seconds), the pool is rebuilt: the task that
    ran longest is reported to ``then`` as a TimeoutError, the others run again."""
    todo = list(first)
    marks.mkdir(parents=True, exist_ok=True)
    while todo:
        broken: list[Task] = []
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init,
                                 initargs=(hard, str(marks))) as pool:
            futures = {pool.submit(_call, t.key, t.fn, t.args): t for t in todo}
            todo = []
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for future in done:
                    task = futures.pop(future)
                    try:
                        value = future.result()
                    except BrokenProcessPool:
                        broken.append(task)
                        continue
                    except Exception as exc:  # the task itself raised
                        value = exc
                    for new in then(task, value):
                        try:
                            futures[pool.submit(_call, new.key, new.fn, new.args)] = new
                        except (BrokenProcessPool, RuntimeError):  # the pool broke meanwhile
                            todo.append(new)
        if broken:
            ages = {p.name: time.time() - p.stat().st_mtime for p in marks.iterdir()}
            culprit = max(broken, key=lambda t: ages.get(t.key, -1.0))
            for p in marks.iterdir():
                p.unlink()
            print(f"worker killed while running {culprit.key}; restarting the pool", file=sys.stderr, flush=True)
            todo = [t for t in broken if t is not culprit] + todo
            todo += then(culprit, TimeoutError(f"the worker was killed after {hard:.0f} s (hard timebox)"))


# ----------------------------------------------------------------------------- the sweep


def _sweep(name: str, family: str, params: int, folder: str) -> dict:
    return ts.sweep_one(name, family, params, Path(folder) / name).to_dict()


# What the first full run found, in words; shown under a model only while it fails.
EXPLAIN = {
    "nest_tiny": "nest calls F.scaled_dot_product_attention on 5-D tensors (batch, heads, blocks, tokens, dim); "
                 "torch.onnx's SDPA translation (torch/onnx/_internal/exporter/_torchlib/ops/nn.py) accepts only "
                 "4-D query, key and value.",
    "maxvit_pico_rw_256": "torch.export and run_decompositions() succeed; torch.onnx's own step 2/3 (decomposing the "
                          "FX graph for ONNX) fails on a view of a non-contiguous tensor in maxvit's window "
                          "partition, with or without hooks.",
}


def _blame_list(rows: list[ts.Row]) -> list[str]:
    out = []
    for r in rows:
        if not r.passed:
            notes = f" ({'; '.join(r.notes)})" if r.notes else ""
            why = f" *Why:* {EXPLAIN[r.model]}" if r.model in EXPLAIN else ""
            out.append(f"- **{r.model}** ({r.family}), at {r.failed_step}, blame: {r.blame}. {r.reason}{notes}{why}")
        elif r.batch == "static":
            out.append(f"- **{r.model}** ({r.family}) passes with a static batch only: {'; '.join(r.notes)}")
    for r in rows:
        f = r.features
        if f and not f["passed"]:
            out.append(f"- **{r.model}** features_only, at {f['failed_step']}, blame: {f['blame']}. {f['reason']}")
    return out or ["- none"]


def main() -> None:
    start = time.perf_counter()
    load_before = os.getloadavg()[1]
    chosen = sys.argv[1:]
    families = chosen or ts.families()
    rows: list[ts.Row] = []
    left_out: list[tuple[str, str]] = []
    picked: dict[str, tuple[str, int]] = {}
    picks_left = len(families)

    with tempfile.TemporaryDirectory(dir=HERE) as tmp:
        def then(task: Task, value: Any) -> list[Task]:
            nonlocal picks_left
            if task.key.startswith("pick:"):
                family, picks_left = task.key[5:], picks_left - 1
                if isinstance(value, BaseException):
                    left_out.append((family, f"choosing failed: {ts.one_line(value)}"))
                else:
                    family, name, params, why = value
                    if why:
                        left_out.append((family, why))
                    else:
                        picked[name] = (family, params)
                if picks_left:
                    return []
                print(f"chose {len(picked)} models in {(time.perf_counter() - start) / 60:.1f} min", file=sys.stderr,
                      flush=True)
                # all chosen: the biggest first, so that no big model runs alone at the end
                order = sorted(picked.items(), key=lambda kv: -kv[1][1])
                return [Task(name, _sweep, (name, family, params, tmp)) for name, (family, params) in order]
            family, params = picked[task.key]
            if isinstance(value, BaseException):
                row = ts.Row(model=task.key, family=family, params_m=round(params / 1e6, 2), failed_step="?",
                             reason=ts.one_line(value), blame="timebox" if isinstance(value, TimeoutError) else "?")
            else:
                row = ts.Row(**value)
            rows.append(row)
            status = "pass" if row.passed else f"FAIL at {row.failed_step} ({row.blame}): {row.reason[:120]}"
            feats = row.features
            fstatus = "-" if not feats else ("pass" if feats["passed"] else f"FAIL at {feats['failed_step']}")
            steps = " ".join(f"{k} {v:.1f}s" for k, v in row.steps.items())
            print(f"[{len(rows)}] {row.model} ({row.family}): {status}; features {fstatus} ({steps}) "
                  f"t={(time.perf_counter() - start) / 60:.1f}min", file=sys.stderr, flush=True)
            return []

        run_pool([Task(f"pick:{f}", ts.pick, (f,)) for f in families], then, hard=HARD_SECONDS,
                 marks=Path(tmp) / "running")

    rows.sort(key=lambda r: (r.family, r.model))
    left_out.sort()
    seconds = time.perf_counter() - start
    load = (load_before, os.getloadavg()[1])
    cpu_minutes = sum(r.cpu_seconds for r in rows) / 60
    passed = [r for r in rows if r.passed]
    with_features = [r for r in rows if r.features and r.features["runs"]]
    timm_cannot = [r.model for r in rows if r.features and not r.features["runs"]]
    features_passed = [r for r in with_features if r.features and r.features["passed"]]
    blame: dict[str, int] = {}
    for r in rows:
        if not r.passed:
            blame[r.blame] = blame.get(r.blame, 0) + 1
    report = [
        "# timm sweep: one architecture per family",
        "",
        f"{len(rows)} models swept, {len(passed)} passed ({sum(r.batch == 'static' for r in passed)} of them with a "
        f"static batch only); features_only journey: {len(features_passed)} of {len(with_features)} passed "
        f"(and {len(timm_cannot)} where timm's own hooked feature model does not run: {', '.join(timm_cannot) or '-'}); "
        f"{seconds / 60:.1f} minutes in all (2 processes, 1 thread each), choosing included. The workers spent "
        f"{cpu_minutes:.1f} CPU-minutes on the journeys; the machine's 5-minute load average was "
        f"{load[0]:.1f} at the start and {load[1]:.1f} at the end (2 cores)"
        f"{', so other work shared the cores' if max(load) > 2.5 else ''}.",
        "",
        "**The rule.** For every timm module (`timm.list_modules()`: one module is one family, e.g. `resnet`, "
        "`convnext`, `vision_transformer`), the model of `timm.list_models(module=...)` with the fewest parameters, "
        "counted on the meta device (ties by name), leaving out timm's own `test_*` models (tiny variants for timm's "
        "unit tests) and families whose smallest model has over "
        f"{ts.MAX_PARAMS / 1e6:.0f} M parameters. Built with `pretrained=False`, run "
        f"at the smallest square input of {list(ts.SIZES)} (or the model's default size) that works with a batch "
        "of 2.",
        "",
        "**The journey.** Attach `Dropout2d(0.2, always=True)` to every `Conv2d` (`Scale(0.5)` to every `Linear` "
        "when there is no `Conv2d`), convert, then the converted model against the hooked one at a second input "
        "size (twice the input up to 64, else 32 more; batch 3; seeded alike; whole outputs bit for bit; a size "
        "the hooked model refuses is recorded, not failed), save, load (checked equal to the converted model "
        "under a seed), "
        "export (dynamo, dynamic batch; when only a static batch exports the result says *pass (static batch)* and "
        "the notes give the dynamic error), parity (statistical for stochastic models: 16 draws per side, the "
        "example and one random input at another batch size; exact ones with atol = 1e-4 x the largest output "
        f"magnitude, `libmodels.scaled_atol`). Timebox: {ts.TIMEBOX} s per model (SIGALRM), the worker killed at "
        f"{HARD_SECONDS} s; a model whose build and input search take over {ts.SLOW_BUILD} s is skipped.",
        "",
        "**Blame.** When export or parity fails, the hooked model is exported with the bare "
        "`torch.onnx.export(model, (x,), dynamo=True)`, run in onnxruntime and checked for parity: *exporter* if "
        "that fails too (export, onnxruntime or parity), *hookwrap* if it works. Failures at build or input size are "
        "the *model*'s; at convert, second size, save or load, hookwrap's.",
        "",
        f"Failures by blame: {json.dumps(blame) if blame else 'none'}.",
        "",
        ts.table(rows),
        "",
        "## features_only=True, feature_cls=\"hook\"",
        "",
        f"On every swept model with at most {ts.FEATURES_MAX_PARAMS / 1e6:.0f} M parameters whose features_only "
        "build installs FeatureHooks (the others use another feature class or do not support features_only), at "
        "the smallest input of the grid that timm's hooked feature model runs. `hw.convert` must raise `UnconvertibleHookError`; "
        "`hw.export_onnx` must export the hooked model itself (`converted` False, `inline_hooks` non-empty, one "
        "ONNX output per feature map); parity is exact on every feature map, the example and one random input, each "
        "map with its own scaled atol (1e-4 x its largest magnitude): check_parity runs with the smallest map's "
        "atol for all, and the reason column says when a check failed that only the per-map atol passes.",
        "",
        ts.features_table(rows),
        "",
        "## Failures and static-batch passes",
        "",
        *_blame_list(rows),
        "",
        "## Families left out",
        "",
        *[f"- {family}: {why}" for family, why in left_out],
        "",
    ]
    if not chosen:
        (HERE / "timm.md").write_text("\n".join(report))
        (HERE / "timm.json").write_text(json.dumps([r.to_dict() for r in rows], indent=1))
    failed = {r.model: f"{r.failed_step} ({r.blame}): {r.reason}" for r in rows if not r.passed}
    not_exporter = [r.model for r in rows if not r.passed and r.blame not in ("exporter", "model")] + [
        f"{r.model} (features)" for r in with_features
        if r.features and not r.features["passed"] and r.features["blame"] not in ("exporter", "model")]
    emit("timm", [
        figure("timm_models_swept", len(rows), None if chosen else MIN_SWEPT, better="higher",
               left_out=[f for f, _ in left_out]),
        figure("timm_models_passed", len(passed), None, first_full_run=FIRST_RUN["passed"],
               failed=failed, static_batch=[r.model for r in passed if r.batch == "static"]),
        figure("timm_failures_blamed_on_hookwrap", len(not_exporter), 0, failed=not_exporter),
        figure("timm_features_passed", len(features_passed), None if chosen else MIN_FEATURES, better="higher",
               first_full_run=FIRST_RUN["features"],
               failed={r.model: f"{r.features['reason']} (blame: {r.features['blame']})" for r in with_features
                       if r.features and not r.features["passed"]}, timm_cannot_run=timm_cannot),
        figure("timm_sweep_minutes", seconds / 60, MINUTES_LIMIT, cpu_minutes=round(cpu_minutes, 1),
               load_average=[round(v, 1) for v in load]),
    ])


if __name__ == "__main__":
    main()
