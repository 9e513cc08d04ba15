"""Issue 4 figures, on the seed's converted vgg16 (553 MB of float32 weights):

* time ratio hw.save / safetensors.torch.save_model, both overwriting an existing file,
  limit 1.05; also hw.save against save_model followed by fsync (the like-for-like durable
  baseline, since hw.save's crash safety needs an fsync and an atomic rename);
* time ratio hw.load / safetensors.torch.load_model, limit 1.05 (each side loads into a
  fresh copy of the plain model, made and garbage-collected before the clock starts);
* peak RSS above the process baseline during hw.save, as a fraction of the model's bytes,
  limit 0.1 (sampled every millisecond by a thread).
"""

from __future__ import annotations

import copy
import gc
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from _common import emit, figure, timed
from helpers import DropoutHook, build
from safetensors.torch import load_model, save_model

import hookwrap as hw


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def peak_rss_during(fn) -> tuple[int, int]:
    proc = psutil.Process()
    baseline = proc.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.001)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return baseline, peak


def main() -> None:
    torch.set_grad_enabled(False)
    model = build("vgg16")
    seed_hook = DropoutHook(0.2)
    model.apply(seed_hook.register_hook)
    converted = hw.convert(model, (torch.randn(1, 3, 64, 64),))
    plain = build("vgg16")
    model_bytes = sum(t.numel() * t.element_size() for t in converted.state_dict().values())

    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        a, b = Path(tmp) / "hw.safetensors", Path(tmp) / "st.safetensors"
        hw.save(converted, a)
        save_model(converted, str(b))
        save_hw, save_st, save_st_sync = [], [], []
        for r in range(15):
            order = ["hw", "st", "sync"] if r % 2 == 0 else ["sync", "st", "hw"]
            for which in order:
                os.sync()  # start each timed save with no writeback pending from the last one
                if which == "hw":
                    save_hw.append(timed(lambda: hw.save(converted, a)))
                elif which == "st":
                    save_st.append(timed(lambda: save_model(converted, str(b))))
                else:
                    save_st_sync.append(timed(lambda: (save_model(converted, str(b)), fsync_path(b))))
        save_ratio = statistics.median(x / y for x, y in zip(save_hw, save_st))
        save_sync_ratio = statistics.median(x / y for x, y in zip(save_hw, save_st_sync))

        load_hw, load_st = [], []
        for r in range(31):
            # Both sides load into a fresh copy of the plain model, as a user's code would.
            base, base_st = copy.deepcopy(plain), copy.deepcopy(plain)
            order = ["hw", "st"] if r % 2 == 0 else ["st", "hw"]
            for which in order:
                gc.collect()  # the copies' garbage-collector debt is not either side's cost
                if which == "hw":
                    load_hw.append(timed(lambda base=base: hw.load(a, base=base)))
                else:
                    load_st.append(timed(lambda base_st=base_st: load_model(base_st, str(a))))
            del base, base_st
        load_ratio = statistics.median(x / y for x, y in zip(load_hw, load_st))

        baseline, peak = peak_rss_during(lambda: hw.save(converted, a))
    emit("io", [
        figure("save_time_ratio_vs_save_model", save_ratio, 1.05,
               hw_save_s=statistics.median(save_hw), save_model_s=statistics.median(save_st)),
        figure("save_time_ratio_vs_save_model_plus_fsync", save_sync_ratio, 1.05,
               save_model_fsync_s=statistics.median(save_st_sync)),
        figure("load_time_ratio_vs_load_model", load_ratio, 1.05,
               hw_load_s=statistics.median(load_hw), load_model_s=statistics.median(load_st)),
        figure("save_peak_rss_fraction_of_model", (peak - baseline) / model_bytes, 0.1,
               model_mb=model_bytes / 1e6, peak_above_baseline_mb=(peak - baseline) / 1e6),
    ])


if __name__ == "__main__":
    main()
