"""hw.save / hw.load / hw.read_manifest: round trips, security, broken files, crash safety."""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from crafting import hooked_small, rewrite
from helpers import ROOT, DropoutHook, build, hook_table, small_cnn, state_equal, tied
from safetensors import safe_open
from safetensors.torch import load_file, save_model
from torch import nn

import hookwrap as hw
from hookwrap import wrappers as W
from hookwrap.io import load_weights

TESTS = str(ROOT / "tests")

FRESH = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    import hookwrap as hw
    from helpers import build, tied
    bases = {{"vgg16": lambda: build("vgg16", seed=7), "resnet18": lambda: build("resnet18", seed=7),
              "tied": lambda: tied(seed=7)}}
    model = hw.load({path!r}, base=bases[{kind!r}])
    x = torch.load({xpath!r})
    with torch.no_grad():
        torch.manual_seed(0)
        y = model(x)
    torch.save({{"y": y, "state": model.state_dict(), "hooks": len(hw.inventory(model))}}, {out!r})
""")


def round_trip_fresh(tmp_path, converted, kind, x):
    path, xpath, out = tmp_path / f"{kind}.safetensors", tmp_path / "x.pt", tmp_path / "out.pt"
    hw.save(converted, path)
    torch.save(x, xpath)
    code = FRESH.format(tests=TESTS, path=str(path), kind=kind, xpath=str(xpath), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = torch.load(out)
    with torch.no_grad():
        torch.manual_seed(0)
        expected = converted(x)
    assert torch.equal(got["y"], expected)
    assert state_equal(got["state"], converted.state_dict())
    assert got["hooks"] == 0
    return path


def test_round_trip_seed_vgg16(tmp_path):
    model = build("vgg16")
    seed_hook = DropoutHook(0.2)
    model.apply(seed_hook.register_hook)
    x = torch.randn(2, 3, 32, 32)
    converted = hw.convert(model, (x,))
    path = round_trip_fresh(tmp_path, converted, "vgg16", x)
    manifest = hw.read_manifest(path)
    assert manifest["format_version"] == 3 and manifest["torch_version"] == torch.__version__.split("+")[0]
    assert len(manifest["wrappers"]) == 13
    assert manifest["wrappers"]["features.0"] == {
        "module": "Conv2d", "pre": [], "post": [{"type": "Dropout2d", "config": {"p": 0.2, "always": True}}],
    }
    assert len(manifest["converted"]) == 13
    # a normal safetensors file: plain load_file works, keys are exactly the state_dict keys
    assert sorted(load_file(path)) == sorted(converted.state_dict())


def test_round_trip_resnet18_with_pruning_baked(tmp_path):
    model = build("resnet18")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            torch.nn.utils.prune.l1_unstructured(m, "weight", amount=0.3)
    x = torch.randn(2, 3, 32, 32)
    converted = hw.convert(model, (x,))
    path = round_trip_fresh(tmp_path, converted, "resnet18", x)
    manifest = hw.read_manifest(path)
    assert len(manifest["baked"]) == 20 and manifest["wrappers"] == {}
    assert not [k for k in load_file(path) if k.endswith(("_orig", "_mask"))]


def test_round_trip_captured_hook_closure(tmp_path):
    model = build("resnet18")
    offset = torch.randn(1000)

    def closure(m, a, o):
        return o * torch.sigmoid(o) + offset

    model.fc.register_forward_hook(closure)
    x = torch.randn(2, 3, 32, 32)
    converted = hw.convert(model, (x,))
    assert type(W.host_wrappers(converted.fc)[1][0]) is W.CapturedHook
    path = round_trip_fresh(tmp_path, converted, "resnet18", x)
    keys = sorted(load_file(path))
    assert "fc.hookwrap_post.0.c0" in keys and keys == sorted(converted.state_dict())


def test_round_trip_tied_weights(tmp_path):
    model = tied()
    model.mix.register_forward_hook(lambda m, a, o: o * 0.5)
    ids = torch.randint(0, 50, (3, 7))
    converted = hw.convert(model, (ids,))
    path = round_trip_fresh(tmp_path, converted, "tied", ids)
    assert hw.read_manifest(path)["aliases"] == {"head.weight": "emb.weight"}
    assert sorted(load_file(path)) == sorted(k for k in converted.state_dict() if k != "head.weight")
    loaded = hw.load(path, base=lambda: tied(seed=3))
    assert loaded.head.weight is loaded.emb.weight


def test_plain_safetensors_file_loads_as_weights(tmp_path):
    model = build("resnet18", seed=1)
    path = tmp_path / "plain.safetensors"
    save_model(model, str(path))
    loaded = hw.load(path, base=lambda: build("resnet18", seed=2))
    assert state_equal(loaded.state_dict(), model.state_dict())
    with pytest.raises(hw.ManifestError, match="plain safetensors file with no hookwrap manifest"):
        hw.read_manifest(path)


def test_save_refuses_live_hooks_and_reserved_metadata(tmp_path):
    model = small_cnn()
    model[0].register_forward_hook(lambda m, a, o: o * 2)
    with pytest.raises(hw.HookwrapError, match="still has 1 forward hook.*call hw.convert"):
        hw.save(model, tmp_path / "m.safetensors")
    converted = hw.convert(model, (torch.randn(1, 3, 8, 8),))
    with pytest.raises(hw.InvalidArgumentError, match="reserved"):
        hw.save(converted, tmp_path / "m.safetensors", metadata={"hookwrap": "x"})
    assert not list(tmp_path.iterdir())
    with pytest.raises(hw.InvalidArgumentError, match="folder .*nowhere' does not exist"):
        hw.save(converted, tmp_path / "nowhere" / "m.safetensors")
    hw.save(converted, tmp_path / "m.safetensors", metadata={"run": "42"})
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left behind
    with safe_open(tmp_path / "m.safetensors", "pt") as fh:
        assert fh.metadata()["run"] == "42"


def test_load_refuses_a_base_with_live_hooks(tmp_path):
    model = small_cnn()
    model[0].register_forward_hook(lambda m, a, o: o * 2)
    path = tmp_path / "m.safetensors"
    hw.save(hw.convert(model, (torch.randn(1, 3, 8, 8),)), path)
    base = small_cnn()
    base[0].register_forward_hook(lambda m, a, o: o * 2)
    with pytest.raises(hw.ManifestError, match="live forward hooks .*would run on top"):
        hw.load(path, base=base)
    with pytest.raises(hw.HookwrapError, match="base factory .* raised ValueError: nope"):
        hw.load(path, base=lambda: (_ for _ in ()).throw(ValueError("nope")))


# ----------------------------------------------------------------------------------------
# Hostile and broken files
# ----------------------------------------------------------------------------------------


def assert_refused(path, key, *, base=None, error=hw.HookwrapError):
    base = base if base is not None else small_cnn(seed=9)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    table = hook_table(base)
    with pytest.raises(error) as info:
        hw.load(path, base=base)
    assert key in str(info.value), str(info.value)
    assert state_equal(base.state_dict(), state)
    assert hook_table(base) == table and not any(W.is_host(m) for m in base.modules())
    return info.value


@pytest.mark.parametrize("wrapper_type", ["os.system", "builtins.eval", "subprocess.Popen", "hookwrap_canary_mod.Evil"])
def test_manifest_naming_importable_objects_is_refused_without_import(tmp_path, monkeypatch, wrapper_type):
    marker = tmp_path / "imported"
    (tmp_path / "hookwrap_canary_mod.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\nclass Evil:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    good = hooked_small(tmp_path)

    def evil(manifest):
        manifest["wrappers"]["0"]["post"][0] = {"type": wrapper_type, "config": {"command": "echo pwned"}}

    bad = rewrite(good, tmp_path / "bad.safetensors", manifest_fn=evil)
    err = assert_refused(bad, "0.hookwrap_post.0", error=hw.ManifestError)
    assert "unknown wrapper type" in str(err) and wrapper_type in str(err)
    assert "hookwrap_canary_mod" not in sys.modules and not marker.exists()


@pytest.mark.parametrize("corrupt", ["op", "ref", "shape", "truncate"])
def test_corrupt_captured_graph_is_refused(tmp_path, corrupt):
    good = hooked_small(tmp_path)

    def mutate(manifest):
        graph = manifest["wrappers"]["5"]["post"][0]["config"]["graph"]
        if corrupt == "op":
            graph["nodes"][0]["op"] = "os.system"
        elif corrupt == "ref":
            graph["nodes"][0]["args"][0] = {"n": 999}
        elif corrupt == "shape":
            graph["inputs"] = 17
        else:
            graph["nodes"] = graph["nodes"][:1]
            graph["outputs"] = [{"n": 40}]

    bad = rewrite(good, tmp_path / "bad.safetensors", manifest_fn=mutate)
    assert_refused(bad, "5.hookwrap_post.0", error=hw.ManifestError)


def test_wrong_format_version_and_unknown_wrapper_type(tmp_path):
    good = hooked_small(tmp_path)
    v4 = rewrite(good, tmp_path / "v4.safetensors", manifest_fn=lambda m: m.update(format_version=4), marker="4")
    err = assert_refused(v4, "format_version", error=hw.ManifestError)
    assert "format_version 4 is not supported" in str(err)

    def unknown(manifest):
        manifest["wrappers"]["0"]["post"][0]["type"] = "TeleportDropout"

    bad = rewrite(good, tmp_path / "u.safetensors", manifest_fn=unknown)
    assert "TeleportDropout" in str(assert_refused(bad, "0.hookwrap_post.0", error=hw.ManifestError))

    def tampered(manifest):
        manifest["wrappers"]["0"]["post"][0]["config"]["items"][0]["config"]["factor"] = 9.0

    tampered_path = rewrite(good, tmp_path / "t.safetensors", manifest_fn=tampered)
    raw = bytearray(tampered_path.read_bytes())
    # undo the digest fix-up: flip one digit of the stored factor back by editing bytes
    text = raw.replace(b"9.0", b"8.0", 1)
    (tmp_path / "t2.safetensors").write_bytes(bytes(text))
    assert_refused(tmp_path / "t2.safetensors", "hookwrap", error=hw.ManifestError)


def test_shape_mismatch_missing_and_unexpected_keys(tmp_path):
    good = hooked_small(tmp_path)

    wider = small_cnn()
    wider[5] = nn.Linear(8, 6)
    err = assert_refused(good, "5.weight", base=wider, error=hw.ManifestError)
    assert "shape mismatch" in str(err) and "[6, 8]" in str(err) and "[4, 8]" in str(err)

    def drop(tensors, manifest):
        del tensors["2.bias"]
        del manifest["tensors"]["2.bias"]

    missing = rewrite(good, tmp_path / "missing.safetensors", tensors_fn=drop)
    assert "missing key '2.bias'" in str(assert_refused(missing, "2.bias", error=hw.ManifestError))

    def add(tensors, manifest):
        tensors["9.weight"] = torch.zeros(3)
        manifest["tensors"]["9.weight"] = ["F32", [3]]

    extra = rewrite(good, tmp_path / "extra.safetensors", tensors_fn=add)
    assert "unexpected key '9.weight'" in str(assert_refused(extra, "9.weight", error=hw.ManifestError))
    # strict=False tolerates the extra key
    assert isinstance(hw.load(extra, base=small_cnn(), strict=False), nn.Sequential)


def header_entries(raw: bytes) -> list[tuple[int, int, str]]:
    """(start, end, key) byte spans of each top-level header entry, from the original file."""
    n = struct.unpack("<Q", raw[:8])[0]
    text = raw[8:8 + n].decode("utf-8")
    decoder = json.JSONDecoder()
    spans, pos = [], 1
    while text[pos] != "}":
        key, after_key = decoder.raw_decode(text, pos)
        _, end = decoder.raw_decode(text, after_key + 1)
        spans.append((8 + pos, 8 + end, key))
        pos = end + 1 if text[end] == "," else end
    return spans


def test_truncated_files(tmp_path):
    good = hooked_small(tmp_path)
    raw = good.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__")
    spans = sorted((v["data_offsets"][0], v["data_offsets"][1], k) for k, v in header.items())
    data_start = 8 + n
    offsets = [0, 5, 8, 8 + n // 3, 8 + n - 1, data_start, data_start + 10,
               data_start + spans[len(spans) // 2][0] + 2, len(raw) - 100, len(raw) - 1]
    assert len(set(offsets)) == 10
    for cut in offsets:
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(raw[:cut])
        if cut < data_start:  # the header itself is cut
            assert_refused(path, "header", error=hw.ManifestError)
            continue
        first_cut = next(k for b, e, k in spans if data_start + e > cut)
        assert_refused(path, first_cut, error=hw.ManifestError)


def test_bit_flips_in_the_header(tmp_path):
    good = hooked_small(tmp_path)
    raw = good.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    entries = header_entries(raw)
    rng = random.Random(0)
    positions = sorted(rng.sample(range(8 + n), 60)) + [0, 3, 7]
    for pos in positions:
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << rng.randrange(8)
        path = tmp_path / "flip.safetensors"
        path.write_bytes(bytes(flipped))
        base = small_cnn(seed=9)
        state = {k: v.clone() for k, v in base.state_dict().items()}
        with pytest.raises(hw.HookwrapError) as info:
            hw.load(path, base=base)
        message = str(info.value)
        assert state_equal(base.state_dict(), state) and not any(W.is_host(m) for m in base.modules())
        if pos < 8:
            assert "header" in message, (pos, message)
            continue
        entry = next((key for start, end, key in entries if start <= pos < end), None)
        if entry is None:  # padding or structure between entries
            assert "header" in message, (pos, message)
        elif entry == "__metadata__":
            assert any(k in message for k in ("__metadata__", "hookwrap", "format", "metadata")), (pos, message)
        else:
            start = next(start for start, end, key in entries if key == entry)
            as_flipped = bytes(flipped[start + 1:start + 1 + len(entry.encode())]).decode("utf-8", "replace")
            # The entry is named as the original has it, or as the flip renamed it.
            assert entry in message or as_flipped in message or "header" in message, (pos, entry, message)


# ----------------------------------------------------------------------------------------
# Crash safety
# ----------------------------------------------------------------------------------------

SAVER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from torch import nn
    import hookwrap as hw
    torch.manual_seed(1)
    model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(12)])
    model[0].register_forward_hook(lambda m, a, o: o * 2.0)
    model = hw.convert(model, (torch.randn(2, 1024),))
    print("ready", flush=True)
    while True:
        hw.save(model, {target!r})
""")


def big_model(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(12)])
    model[0].register_forward_hook(lambda m, a, o: o * 2.0)
    return hw.convert(model, (torch.randn(2, 1024),))


def test_sigkill_during_save_never_corrupts_the_target(tmp_path):
    target = tmp_path / "model.safetensors"
    old, new = big_model(0), big_model(1)
    old_state, new_state = old.state_dict(), new.state_dict()
    rng = random.Random(1234)
    outcomes = {"old": 0, "new": 0}
    mid_save = 0
    for attempt in range(24):
        hw.save(old, target)
        proc = subprocess.Popen([sys.executable, "-c", SAVER.format(tests=TESTS, target=str(target))],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        leftovers = [p for p in tmp_path.iterdir() if p.name != target.name]
        mid_save += bool(leftovers)
        loaded = hw.load(target, base=lambda: nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(12)]))
        state = loaded.state_dict()
        if state_equal(state, old_state):
            outcomes["old"] += 1
        else:
            assert state_equal(state, new_state), f"attempt {attempt}: the target is neither file"
            outcomes["new"] += 1
        hw.save(old, target)  # the next save removes what the killed writer left behind
        assert [p.name for p in tmp_path.iterdir()] == [target.name], f"attempt {attempt}: stale temporary files"
    print(f"SIGKILL during save: {outcomes}, {mid_save} kills left a temporary file (mid-save)")
    assert outcomes["old"] + outcomes["new"] == 24
    assert mid_save >= 3, f"only {mid_save} kills landed mid-save; the test did not exercise the hazard"
    assert outcomes["old"] >= 1 and outcomes["new"] >= 1, outcomes


def test_saving_over_a_large_file_releases_the_old_one(tmp_path, monkeypatch):
    """The old file's blocks are freed by a background close; no descriptor is leaked and
    the new file is in place when save returns."""
    import threading

    from hookwrap import _fs

    monkeypatch.setattr(_fs, "_DEFER_RELEASE_BYTES", 1)
    target = tmp_path / "m.safetensors"
    old, new = small_cnn(seed=1), small_cnn(seed=2)
    hw.save(old, target)
    before = len(os.listdir("/proc/self/fd"))
    for model in (new, old, new):
        hw.save(model, target)
    for thread in threading.enumerate():
        if thread.name == "hookwrap-release":
            thread.join(10)
    assert len(os.listdir("/proc/self/fd")) == before
    assert state_equal(hw.load(target, base=small_cnn(seed=3)).state_dict(), new.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_of_dead_writers_are_removed_and_others_kept(tmp_path):
    from hookwrap._fs import TMP_MARK, temp_prefix

    target = tmp_path / "m.safetensors"
    ours = temp_prefix(target)  # ".m.safetensors.hookwrap-tmp-<host>-<pid>-"
    host = ours[len(f".{target.name}{TMP_MARK}"):].rsplit("-", 2)[0]
    dead = tmp_path / f".{target.name}{TMP_MARK}{host}-{_dead_pid()}-abc123"
    dead_dir = tmp_path / f".{target.name}{TMP_MARK}{host}-{_dead_pid()}-dir"  # an interrupted ONNX export
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".{target.name}{TMP_MARK}{host}-{sleeper.pid}-xyz"
        remote = tmp_path / f".{target.name}{TMP_MARK}otherhost-{_dead_pid()}-q"
        other_target = tmp_path / f".other.safetensors{TMP_MARK}{host}-{_dead_pid()}-q"
        for p in (dead, live, remote, other_target):
            p.write_bytes(b"partial")
        dead_dir.mkdir()
        (dead_dir / "m.onnx").write_bytes(b"partial")
        hw.save(small_cnn(), target)
        left = sorted(p.name for p in tmp_path.iterdir())
        assert dead.name not in left and dead_dir.name not in left
        assert {live.name, remote.name, other_target.name, target.name} == set(left)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_versioned_state_dicts_load(tmp_path):
    """torchvision's MNASNet checks the state-dict version in its _load_from_state_dict; a
    plain tensor dict carries none, so the loader passes the base model's own versions."""
    model = build("mnasnet0_5")
    model.layers[0].register_forward_hook(hw.hooks.Scale(0.5))
    converted = hw.convert(model)
    hw.save(converted, tmp_path / "m.safetensors")
    loaded = hw.load(tmp_path / "m.safetensors", base=lambda: build("mnasnet0_5", seed=4))
    assert state_equal(loaded.state_dict(), converted.state_dict())
    save_model(build("mnasnet0_5", seed=1), str(tmp_path / "plain.safetensors"))
    plain = hw.load(tmp_path / "plain.safetensors", base=lambda: build("mnasnet0_5", seed=4))
    assert state_equal(plain.state_dict(), build("mnasnet0_5", seed=1).state_dict())


def test_a_non_strict_load_reports_the_keys_it_did_not_find(tmp_path):
    good = hooked_small(tmp_path)

    def drop(tensors, manifest):
        del tensors["2.bias"]
        del manifest["tensors"]["2.bias"]

    missing = rewrite(good, tmp_path / "missing.safetensors", tensors_fn=drop)
    base = small_cnn(seed=4)
    kept = base[2].bias.clone()
    loaded = hw.load(missing, base=base, strict=False)
    assert hw.conversion_report(loaded).missing_keys == ("2.bias",)
    assert torch.equal(loaded[2].bias, kept)  # the base kept its own tensor
    assert hw.conversion_report(hw.load(good, base=small_cnn())).missing_keys == ()


def test_module_names_torch_allows_survive_save_and_load(tmp_path):
    """torchvision's RegNet names its blocks "block1-0": every name add_module accepts
    (anything without a dot) must round-trip; control characters are still refused."""
    import torchvision

    def regnet() -> nn.Module:
        torch.manual_seed(0)
        return torchvision.models.regnet_x_400mf(weights=None).eval()

    model = regnet()
    hw.attach(model, hw.hooks.Scale(1.5), where=nn.Conv2d)
    converted = hw.convert(model, (torch.randn(1, 3, 32, 32),))
    assert any("-" in a.path for a in hw.conversion_report(converted).of("converted"))
    hw.save(converted, tmp_path / "regnet.safetensors")
    loaded = hw.load(tmp_path / "regnet.safetensors", base=regnet)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, got = converted(x), loaded(x)
    with torch.no_grad():
        plain = regnet()(x)
    assert (expected - plain).abs().max() > 1e-2 * plain.abs().max()  # the hooks show in the output
    assert torch.equal(got, expected)


def test_tensors_at_any_offset_and_dtype_load_exactly_and_never_write_the_file(tmp_path):
    """hw.load reads tensors from the byte ranges of the header it checked: a float32
    tensor placed at an odd offset (safetensors does not promise alignment) loads exactly,
    so do other dtypes and an empty tensor; weights loaded with ``assign=True`` are
    private copy-on-write pages, so writing them leaves the file as it was."""
    values = {"a": torch.tensor([7], dtype=torch.uint8), "b": torch.randn(3, 5),
              "c": torch.randn(4).to(torch.float16), "d": torch.tensor([True, False, True]),
              "e": torch.empty(0, 3), "f": torch.arange(6, dtype=torch.int64).reshape(2, 3)}
    names = {torch.uint8: "U8", torch.float32: "F32", torch.float16: "F16", torch.bool: "BOOL",
             torch.int64: "I64"}
    header, data = {}, b""
    for key, value in values.items():  # in this order "b" starts at byte 1 of the data
        raw = value.contiguous().view(torch.uint8).numpy().tobytes() if value.numel() else b""
        header[key] = {"dtype": names[value.dtype], "shape": list(value.shape),
                       "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    assert header["b"]["data_offsets"][0] % 4 == 1

    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for key, value in values.items():
                self.register_buffer(key, torch.zeros_like(value))

    loaded = hw.load(path, base=Holder)
    for key, value in values.items():
        assert getattr(loaded, key).dtype == value.dtype and torch.equal(getattr(loaded, key), value), key
    before = path.read_bytes()
    shared = load_weights(Holder(), path, assign=True)
    assert torch.equal(shared.b, values["b"])
    shared.b.add_(1.0)
    shared.f.mul_(3)
    assert path.read_bytes() == before
    assert torch.equal(hw.load(path, base=Holder).b, values["b"])


def test_format_2_captured_graphs_still_load_and_fail_by_name_at_other_sizes(tmp_path):
    """Files written before format 3 carry no sizes for their captured graphs (and kept only
    the batch dimension symbolic): they load, and a call the graph cannot take is a
    HookwrapError naming the wrapper, not a raw error from inside the graph."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4)).eval()
    table = torch.randn(8, 4)
    model[0].register_forward_hook(lambda m, a, o: o * table)
    x = torch.randn(2, 8, 4)
    path = tmp_path / "v3.safetensors"
    hw.save(hw.convert(model, (x,)), path)

    def older(manifest):
        manifest["format_version"] = 2
        config = manifest["wrappers"]["0"]["post"][0]["config"]
        del config["input_dims"], config["symbols"], config["input_dtypes"]

    old = rewrite(path, tmp_path / "v2.safetensors", manifest_fn=older, marker="2")
    loaded = hw.load(old, base=lambda: nn.Sequential(nn.Linear(4, 4)).eval())
    assert loaded[0].hookwrap_post[0].input_dims is None
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        with pytest.raises(hw.HookwrapError) as info:
            loaded(torch.randn(2, 11, 4))
    text = str(info.value)
    assert text.startswith("0.hookwrap_post.0: the captured post-hook") and "output [2, 11, 4]" in text
    assert "older than format 3" in text


def _gpt2(device: str = "cpu"):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64, eos_token_id=0,
                        bos_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        return GPT2LMHeadModel(config).eval()


def test_load_into_a_base_on_the_meta_device_maps_the_file(tmp_path):
    """A base built on the meta device (no memory) gets the file's tensors mapped from the
    file, not copied: the same outputs as the hooked model, tied weights still one
    Parameter, no tensor left on meta."""
    model = _gpt2()
    steer = torch.randn(32, generator=torch.Generator().manual_seed(2))  # a steering vector (a shift LayerNorm keeps)
    model.transformer.h[0].register_forward_hook(lambda m, a, o: (o[0] + steer, *o[1:]) if isinstance(o, tuple)
                                                 else o + steer)
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    hw.save(hw.convert(model, (ids,)), tmp_path / "m.safetensors")
    loaded = hw.load(tmp_path / "m.safetensors", base=lambda: _gpt2("meta"))
    with torch.no_grad():
        want, got = model(ids).logits, loaded(ids).logits
        plain = _gpt2()(ids).logits
    assert torch.equal(got, want) and not torch.allclose(plain, want, atol=1e-3)  # the hook shows in the output
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert not [k for k, t in [*loaded.named_parameters(), *loaded.named_buffers()] if t.is_meta]
    size = (tmp_path / "m.safetensors").stat().st_size
    weight = loaded.transformer.h[1].mlp.c_fc.weight
    assert weight.untyped_storage().nbytes() == size  # a view of the whole mapped file: no copy


def test_a_meta_base_whose_tensor_the_file_lacks_is_refused_untouched(tmp_path):
    class WithMask(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.register_buffer("mask", torch.ones(4), persistent=False)

        def forward(self, x):
            return self.fc(x) * self.mask

    torch.manual_seed(0)
    model = WithMask()
    model.fc.register_forward_hook(lambda m, a, o: o * 3.0)
    x = torch.randn(2, 4)
    hw.save(hw.convert(model, (x,)), tmp_path / "m.safetensors")
    with torch.device("meta"):
        base = WithMask()
    with pytest.raises(hw.InvalidArgumentError, match="'mask'.*meta device|meta device.*'mask'"):
        hw.load(tmp_path / "m.safetensors", base=base)
    assert base.fc.weight.is_meta and base.mask.is_meta and not W.is_host(base.fc)
    # with the buffer built on the CPU, the rest on meta, it loads
    with torch.device("meta"):
        base = WithMask()
    base.mask = torch.ones(4)
    assert torch.equal(hw.load(tmp_path / "m.safetensors", base=base)(x), model(x))


def test_verify_reads_in_chunks_and_reports_progress(tmp_path):
    """verify hashes the file's data through one bounded buffer (no tensor is loaded) and
    reports the bytes done; the last report is the whole data section."""
    from hookwrap import _file

    model = build("resnet18")
    hw.save(model, tmp_path / "m.safetensors")
    seen: list[tuple[int, int]] = []
    result = _file.verify(tmp_path / "m.safetensors", progress=lambda done, total: seen.append((done, total)))
    assert result and seen[-1] == (result.bytes, result.bytes)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len({t for _, t in seen}) == 1
    assert result.bytes == sum(t.numel() * t.element_size() for t in model.state_dict().values())
