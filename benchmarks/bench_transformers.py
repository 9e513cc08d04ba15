"""Sweep Hugging Face transformers families through the whole hookwrap journey.

Every family of ``tests/libmodels.HF_FAMILIES`` plus ``EXTRA_FAMILIES`` of
``tests/zoo/hf_sweep.py``, built tiny from configs with the default settings
(``use_cache=True``) and ``libmodels.hook_llm``'s hooks: convert (logits equal), save, load
(logits equal), export with the default config (decoders: ``hw.ExportError`` "needs
use_cache=False", the bare exporter failing too), then ``use_cache = False``, export and
parity on the logits. Two worker processes (one per core), one thread each; each family is
timeboxed. Writes ``benchmarks/transformers.md`` and ``benchmarks/transformers.json`` and
prints JSON figures: families swept, passed, and the wall time.

    python benchmarks/bench_transformers.py            # all families
    python benchmarks/bench_transformers.py gpt2 bert  # some (writes no files)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emit, figure  # first: it puts the project and tests/ on sys.path
from bench_timm import Task, run_pool
from libmodels import HF_FAMILIES
from zoo import hf_sweep as hs

HERE = Path(__file__).parent
HARD_SECONDS = hs.TIMEBOX + 120  # a worker stuck past its soft timebox is killed (faulthandler)
MIN_SWEPT = 10  # issue 13: at least 10 architectures
FIRST_RUN_PASSED = 25  # for comparison; the guard is that every failure is the exporter's (the bare one fails too)
MINUTES_LIMIT = 8.0


# What the first full run found, in words; shown under a family only while it fails.
_MOE = ("transformers 5 runs the MoE experts through its own custom op torch.ops.transformers.grouped_mm_fallback, "
        "which torch.onnx cannot translate (transformers' own exporter, transformers/exporters/exporter_onnx.py, "
        "registers a translation for it); the model without hooks fails the same way. With "
        "experts_implementation='eager' torch.export fails instead on the data-dependent expert routing "
        "(GuardOnDataDependentSymNode), hooks or not.")
EXPLAIN = {"mixtral": _MOE, "qwen2_moe": _MOE}


def _sweep(family: str, folder: str) -> dict:
    return hs.sweep_one(family, Path(folder) / family).to_dict()


def main() -> None:
    start = time.perf_counter()
    load_before = os.getloadavg()[1]
    chosen = sys.argv[1:]
    families = chosen or hs.ALL_FAMILIES
    rows: list[hs.Row] = []

    def then(task: Task, value: Any) -> list[Task]:
        if isinstance(value, BaseException):
            row = hs.Row(family=task.key, decoder=hs.is_decoder(task.key), failed_step="?",
                         reason=hs.one_line(value), blame="timebox" if isinstance(value, TimeoutError) else "?")
        else:
            row = hs.Row(**value)
        rows.append(row)
        status = "pass" if row.passed else f"FAIL at {row.failed_step} ({row.blame}): {row.reason[:160]}"
        steps = " ".join(f"{k} {v:.1f}s" for k, v in row.steps.items())
        print(f"[{len(rows)}/{len(families)}] {row.family}: {status} ({steps})", file=sys.stderr, flush=True)
        return []

    with tempfile.TemporaryDirectory(dir=HERE) as tmp:
        run_pool([Task(f, _sweep, (f, tmp)) for f in families], then, hard=HARD_SECONDS, marks=Path(tmp) / "running")

    order = {f: i for i, f in enumerate(families)}
    rows.sort(key=lambda r: order[r.family])
    seconds = time.perf_counter() - start
    load = (load_before, os.getloadavg()[1])
    passed = [r for r in rows if r.passed]
    decoders = [r for r in rows if r.decoder]
    needs = [r for r in decoders if r.default_export.startswith("ExportError: needs use_cache=False")]
    failed = [r for r in rows if not r.passed]
    report = [
        "# transformers sweep",
        "",
        f"{len(rows)} families swept ({len(decoders)} decoders, {len(rows) - len(decoders)} encoders), "
        f"{len(passed)} passed, in {seconds / 60:.1f} minutes (2 processes, 1 thread each; the machine's 5-minute "
        f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end, on 2 cores). With the default "
        f"config {len(needs)} of {len(decoders)} decoders cannot be exported (their output holds a KV cache): "
        f"hw.export_onnx raises ExportError naming the cache and the fix, and the bare exporter fails too.",
        "",
        f"**Families.** The {len(HF_FAMILIES)} of `tests/libmodels.HF_FAMILIES` ({', '.join(HF_FAMILIES)}) and the "
        f"{len(hs.EXTRA_FAMILIES)} of `tests/zoo/hf_sweep.EXTRA_FAMILIES` ({', '.join(hs.EXTRA_FAMILIES)}), each "
        "built tiny from its config (hidden size 32, 2 layers, vocabulary 128), random weights, the library's "
        "defaults (`use_cache=True`), token ids of shape (2, 8) (pixels (2, 3, 32, 32) for the vision models, "
        "(2, 3, 64, 64) for Segformer). Models without a head (Dinov2Model, CLIPVisionModel) are compared on "
        "their last hidden state where the others are compared on their logits.",
        "",
        "**The journey.** `libmodels.hook_llm`: a steering closure on every block, a `with_kwargs` pre-hook on the "
        "first block, `Scale(0.9)` on every `nn.Linear`. Convert (the converted model has no forward hooks but "
        "transformers' own output capturing, and its logits equal the hooked model's, `torch.equal`); then the "
        "converted model against the hooked one, whole outputs compared bit for bit: at a second sequence length "
        "(3 longer; the vision models at another image size, where the model accepts it), with "
        "`output_hidden_states=True`, and for decoders in greedy `generate()` of 8 new tokens with the KV cache "
        "(tokens and every step's scores; the loaded model too); save, load in the same process onto a model "
        "built under another seed (logits equal), export with the default config (decoders: `hw.ExportError` naming the cache "
        "and `use_cache = False` is expected, and the bare `torch.onnx.export(model, inputs, dynamo=True)` of the "
        "hooked model must fail too, else hookwrap is to blame; encoders: export and parity), then "
        "`model.config.use_cache = False` (logits unchanged), export (dynamo, dynamic batch) and exact parity on "
        "the logits, atol = 1e-4 x their largest magnitude (`scaled_atol`), the example and 3 random inputs. "
        f"Timebox: {hs.TIMEBOX} s per family. When export or parity fails, the hooked model is exported with the "
        "bare exporter and run in onnxruntime: blame *exporter* if that fails too, *hookwrap* if it works.",
        "",
        hs.table(rows),
        "",
        *[f"What the default-config export says for {r.family} (the other decoders alike): {r.notes[0]}"
          for r in needs[:1] if r.notes],
        "",
        "## Failures",
        "",
        *([f"- **{r.family}** at {r.failed_step}, blame: {r.blame}. {r.reason}"
           + "".join(f"; {n}" for n in r.notes if n.startswith("hookwrap's exporter='legacy'"))
           + (f" *Why:* {EXPLAIN[r.family]}" if r.family in EXPLAIN else "") for r in failed] or ["- none"]),
        "",
    ]
    if not chosen:
        (HERE / "transformers.md").write_text("\n".join(report))
        (HERE / "transformers.json").write_text(json.dumps([r.to_dict() for r in rows], indent=1))
    emit("transformers", [
        figure("transformers_families_swept", len(rows), None if chosen else MIN_SWEPT, better="higher"),
        figure("transformers_families_passed", len(passed), None, first_full_run=FIRST_RUN_PASSED,
               failed={r.family: f"{r.failed_step} ({r.blame}): {r.reason}" for r in failed}),
        figure("transformers_failures_blamed_on_hookwrap", len([r for r in failed if r.blame not in ("exporter", "model")]), 0,
               failed=[r.family for r in failed if r.blame not in ("exporter", "model")]),
        figure("transformers_decoders_needing_use_cache_false", len(needs), None,
               families=[r.family for r in needs]),
        figure("transformers_sweep_minutes", seconds / 60, MINUTES_LIMIT, load_average=[round(v, 1) for v in load]),
    ])


if __name__ == "__main__":
    main()
