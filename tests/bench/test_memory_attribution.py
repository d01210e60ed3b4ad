"""benchmarks/memory_attribution.py's reading of an allocator snapshot, on a hand-made snapshot in
``torch.cuda.memory._snapshot()``'s format whose peak, live set and groups are worked out by hand
below. (Recording a real snapshot needs a GPU; the script exits with a message without one.)"""
from pathlib import Path

import pytest
import torch



@pytest.fixture(scope="module")
def ma(bench_script):
    return bench_script("memory_attribution.py", "memory_attribution")


def py(path, line, name):
    return {"filename": path, "line": line, "name": name}


def cpp(name):
    return {"filename": "??", "line": 0, "name": name}


HARNESS = py("/repo/gladiff/bench/model.py", 64, "train_step")  # outer frame of everything
ALLOCATOR = [cpp("c10::cuda::CUDACachingAllocator::Native::DeviceCachingAllocator::malloc(int, unsigned long)"),
             cpp("at::detail::empty_generic(c10::ArrayRef<long>)")]
GENERATED = "/tmp/torchinductor_me/ab/cabcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnop.py"


def alloc(addr, size, frames):
    return {"action": "alloc", "addr": addr, "size": size, "stream": 0, "frames": frames}


def free(addr, size, action="free_completed"):
    return {"action": action, "addr": addr, "size": size, "stream": 0, "frames": []}


def marker(ma, phase, addr=0x100):
    frames = [py("/repo/benchmarks/memory_attribution.py", 300, "_phase_marker"), HARNESS]
    return [alloc(addr, ma.MARKER_BYTES[phase], frames), free(addr, ma.MARKER_BYTES[phase])]


def block(addr, size, frames=(), state="active_allocated"):
    return {"address": addr, "size": -(-size // 512) * 512, "requested_size": size, "state": state,
            "frames": list(frames)}


def snapshot(ma):
    """A step: parameters 4096 B, optimizer state 8192, a workspace 1000 (allocated before the step,
    live throughout), a block of 2000 allocated before the step and freed in its forward; forward
    allocates A 3000 (dig.py:110), B 500 (inductor), C 700 (dig.py:110 again); backward a gradient
    D 4096 and E 5000 (an eager MmBackward0), frees E and A, and allocates F 100 at A's address.

    Totals: start 4096+8192+1000+2000 = 15288; +A 18288, +B 18788, -2000 16788, +C 17488 (forward);
    +D 21584, +E 26584 = the peak (backward), -E 21584, -A 18584, +F 18684 = end."""
    frames_a = [*ALLOCATOR, py("/site-packages/torch/nn/modules/linear.py", 125, "forward"),
                py("/repo/gladiff/models/dig.py", 110, "project"), py("/repo/gladiff/models/dig.py", 200, "forward"),
                HARNESS]
    frames_b = [*ALLOCATOR, py(GENERATED, 42, "call"),
                py("/site-packages/torch/_inductor/output_code.py", 600, "__call__"), HARNESS]
    frames_d = [*ALLOCATOR, cpp("torch::autograd::AccumulateGrad::apply(std::vector<at::Tensor>&&)"),
                cpp("torch::autograd::Engine::evaluate_function(...)")]
    frames_e = [*ALLOCATOR, cpp("at::native::mm(at::Tensor const&, at::Tensor const&)"),
                cpp("torch::autograd::generated::MmBackward0::apply(std::vector<at::Tensor>&&)"),
                cpp("torch::autograd::Engine::evaluate_function(...)")]
    frames_f = [*ALLOCATOR, py("/repo/gladiff/models/dig.py", 205, "forward"), HARNESS]
    workspace = [*ALLOCATOR, cpp("at::cuda::getCurrentCUDABlasHandle()")]
    trace = [
        *marker(ma, "start"),  # an earlier step: its 50000 B transient must not count
        alloc(0x7000, 50000, frames_a), free(0x7000, 50000, "free_requested"), free(0x7000, 50000),
        alloc(0x8000, 2000, frames_a),
        {"action": "segment_alloc", "addr": 0x10000, "size": 2**21, "stream": 0, "frames": []},
        *marker(ma, "start"),
        *marker(ma, "forward"),
        alloc(0x4000, 3000, frames_a),
        alloc(0x4100, 500, frames_b),
        free(0x8000, 2000, "free_requested"), free(0x8000, 2000),
        {"action": "snapshot", "addr": 0, "size": 0, "stream": 0, "frames": []},
        alloc(0x4200, 700, frames_a),
        *marker(ma, "loss"),
        *marker(ma, "backward", addr=0x200),
        alloc(0x3000, 4096, frames_d),
        alloc(0x4300, 5000, frames_e),
        free(0x4300, 5000),
        free(0x4000, 3000),
        alloc(0x4000, 100, frames_f),
        *marker(ma, "optimizer"),
        *marker(ma, "end"),
    ]
    segments = [
        {"device": 0, "address": 0x1000, "blocks": [
            block(0x1000, 4096), block(0x2000, 8192), block(0x9000, 1000, workspace),
            block(0x3000, 4096, frames_d), block(0x4000, 100, frames_f), block(0x4100, 500, frames_b),
            block(0x4200, 700, frames_a), block(0x5000, 99999, frames_a, state="inactive")]},
        # another card's memory: not this device's
        {"device": 1, "address": 0xA000, "blocks": [block(0xA000, 123456)]},
    ]
    return {"segments": segments, "device_traces": [trace, [alloc(0xA000, 123456, frames_a)]]}


# 0x4000 is a gradient at the end, but the block there at the peak (A) is another allocation.
CATEGORIES = {0x1000: "parameters", 0x2000: "optimizer state", 0x3000: "gradients", 0x4000: "gradients"}


def fake_resolve(filename, line):
    assert (filename, line) == (GENERATED, 42)
    return "triton_poi_fused_mul_3 [x, mul]"


def test_peak_live_set_and_groups(ma):
    r = ma.attribute_peak(snapshot(ma), device=0, categories=CATEGORIES, resolve=fake_resolve)
    assert r["start_bytes"] == 15288 and r["end_bytes"] == 18684
    assert r["peak_bytes"] == 26584
    assert r["peak_phase"] == "backward" and r["peak_site"] == "autograd MmBackward0"
    assert r["unmatched_frees"] == 0
    assert r["phase_peaks"] == {"start": 15288, "forward": 18788, "loss": 17488, "backward": 26584,
                                "optimizer": 18684, "end": 18684}
    assert r["categories"] == {"parameters": 4096, "buffers": 0, "gradients": 4096, "optimizer state": 8192,
                               "inputs": 0, ma.PRE_STEP: 1000, ma.ACTIVATIONS: 3000 + 500 + 700 + 5000}
    assert sum(r["categories"].values()) == r["peak_bytes"]
    assert r["alloc_phases"] == {"forward": 4200, "backward": 5000}
    groups = [(g["site"], g["bytes"], g["blocks"]) for g in r["groups"]]
    assert groups == [
        ("[optimizer state]", 8192, 1),
        ("autograd MmBackward0", 5000, 1),
        ("[gradients]", 4096, 1),
        ("[parameters]", 4096, 1),
        ("gladiff/models/dig.py:110:project", 3700, 2),
        ("C++ at::cuda::getCurrentCUDABlasHandle", 1000, 1),
        ("inductor cabcdefghi:42 triton_poi_fused_mul_3 [x, mul]", 500, 1),
    ]
    by_site = {g["site"]: g for g in r["groups"]}
    assert by_site["gladiff/models/dig.py:110:project"]["key"] == "gladiff/models/dig.py:project"
    assert by_site["gladiff/models/dig.py:110:project"]["phases"] == {"forward": 3700}
    assert by_site["inductor cabcdefghi:42 triton_poi_fused_mul_3 [x, mul]"]["key"] == \
        "inductor triton_poi_fused_mul"
    assert by_site["C++ at::cuda::getCurrentCUDABlasHandle"]["phases"] == {ma.BEFORE: 1000}


def test_without_markers_the_whole_trace_counts(ma):
    """No markers (e.g. recorded by hand): the whole trace is the step, no phases."""
    snap = {"segments": [{"device": 0, "blocks": [block(0x10, 100)]}],
            "device_traces": [[alloc(0x20, 300, []), alloc(0x30, 50, []), free(0x20, 300), free(0x30, 50),
                               alloc(0x10, 100, [])]]}
    r = ma.attribute_peak(snap)
    assert (r["start_bytes"], r["peak_bytes"], r["end_bytes"], r["peak_event"]) == (0, 350, 100, 1)
    assert r["peak_phase"] is None and r["phase_peaks"] == {}
    assert r["categories"][ma.ACTIVATIONS] == 350 and r["groups"][0]["site"] == "(no frames)"


def test_frame_site(ma):
    linear = py("/x/site-packages/torch/nn/modules/linear.py", 125, "forward")
    assert ma.frame_site([*ALLOCATOR, linear, HARNESS]) == ("torch/nn/modules/linear.py:125:forward",
                                                            "torch/nn/modules/linear.py:forward")
    # a gladiff op under a compiled graph: the op is more specific than the generated caller
    gla = py("/w/gladiff/ops/gla/triton_chunk.py", 400, "gla_bwd")
    assert ma.frame_site([gla, py(GENERATED, 7, "call")], lambda f, n: "x") == \
        ("gladiff/ops/gla/triton_chunk.py:400:gla_bwd", "gladiff/ops/gla/triton_chunk.py:gla_bwd")
    name = Path(GENERATED).name
    assert ma.frame_site([py(GENERATED, 7, "call")]) == (f"inductor {name}:7", f"inductor {name}")
    assert ma.frame_site([]) == ("(no frames)", "(no frames)")
    assert ma.short_path("/home/u/gladiff/gladiff/ops/dwconv.py") == "gladiff/ops/dwconv.py"


GENERATED_CODE = """\
def call(args):
    with torch.cuda._DeviceGuard(0):
        # Topologically Sorted Source Nodes: [layer_norm, mul, add], Original ATen: [aten.native_layer_norm]
        buf0 = empty_strided_cuda((4, 16384, 384), (6291456, 384, 1), torch.bfloat16)
        buf1 = empty_strided_cuda((4, 16384, 1), (16384, 1, 1), torch.float32)
        stream0 = get_raw_stream(0)
        triton_red_fused_native_layer_norm_0.run(primals_1, buf1, 65536, 384, stream=stream0)
        triton_poi_fused_add_mul_1.run(primals_1, buf1, buf0, 25165824, stream=stream0)
        buf2 = empty_strided_cuda((65536, 1152), (1152, 1), torch.bfloat16)
        # Topologically Sorted Source Nodes: [linear], Original ATen: [aten.mm]
        extern_kernels.mm(reinterpret_tensor(buf0, (65536, 384), (384, 1), 0), primals_2, out=buf2)
        buf3 = torch.ops.aten._scaled_dot_product_flash_attention.default(buf2, buf2, buf2)
        buf4 = empty_strided_cuda((8, ), (1, ), torch.float32)
        buf5 = reinterpret_tensor(buf4, (2, 4), (4, 1), 0); del buf4  # reuse
        return (buf0, buf5)
"""


def test_inductor_site(ma):
    lines = GENERATED_CODE.splitlines(keepends=True)
    assert ma.inductor_site(lines, 4) == "triton_poi_fused_add_mul_1 [layer_norm, mul, add]"
    assert ma.inductor_site(lines, 5) == "triton_red_fused_native_layer_norm_0 [layer_norm, mul, add]"
    assert ma.inductor_site(lines, 9) == "extern_kernels.mm [linear]"
    assert ma.inductor_site(lines, 12) == "torch.ops.aten._scaled_dot_product_flash_attention.default"
    assert ma.inductor_site(lines, 13) == "buffer [linear]"  # only used through an alias
    assert ma.inductor_site(lines, 99) is None
    assert ma._kernel_key("triton_poi_fused_add_mul_1 [layer_norm, mul, add]") == "triton_poi_fused_add_mul"


def test_compare_summarize_and_report(ma):
    dig = ma.attribute_peak(snapshot(ma), categories=CATEGORIES, resolve=fake_resolve)
    # DiT: the same step without E's 5000 B and with another 1024 B workspace
    snap = snapshot(ma)
    snap["device_traces"][0] = [e for e in snap["device_traces"][0] if e.get("addr") != 0x4300]
    snap["segments"][0]["blocks"].append(block(0xB000, 1024))
    dit = ma.attribute_peak(snap, categories=CATEGORIES, resolve=fake_resolve)
    assert dit["peak_bytes"] == 15288 + 1024 + 3000 + 500 - 2000 + 700 + 4096
    diff = ma.compare(dig, dit, top=10)
    mb = lambda n: round(n / 2**20, 3)  # noqa: E731
    assert diff["peak"] == {"DiG_mb": mb(26584), "DiT_mb": mb(22608), "delta_mb": mb(26584 - 22608)}
    assert {g["key"]: g["delta_mb"] for g in diff["groups"]} == {"autograd MmBackward0": mb(5000),
                                                                 "(no frames)": mb(-1024)}
    assert diff["groups_differing"] == 2
    cats = {c["category"]: c["delta_mb"] for c in diff["categories"]}
    assert cats[ma.ACTIVATIONS] == mb(5000) and cats[ma.PRE_STEP] == mb(-1024) and cats["parameters"] == 0

    s = ma.summarize(dig, top=2)
    assert [g["site"] for g in s["groups"]] == ["[optimizer state]", "autograd MmBackward0"]
    assert s["other_groups_mb"] == mb(26584 - 8192 - 5000) and s["groups_total"] == 7
    assert s["peak_position"] == round((dig["peak_event"] + 1) / dig["events"], 4)
    runs = [dict(family="DiG", mode="eager", **s), dict(family="DiT", mode="eager", **ma.summarize(dit, 2))]
    text = ma.format_report(runs, {"eager": diff}, top=2)
    assert "DiG - DiT +0.0 MB" in text and "autograd MmBackward0" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without a GPU")
def test_exits_cleanly_without_gpu(ma, tmp_path, capsys):
    assert ma.main(["--out", str(tmp_path)]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="--top"):
        ma.main(["--top", "0"])


def test_main_writes_both_families_and_the_difference(ma, tmp_path, monkeypatch, capsys):
    """The orchestration on the CPU: recording is replaced by the hand-made snapshot (DiT's without E),
    the JSON holds every run, the difference and the environment, and stays small."""
    def fake_record(family, args, mode):
        snap = snapshot(ma)
        if family == "DiT":
            snap["device_traces"][0] = [e for e in snap["device_traces"][0] if e.get("addr") != 0x4300]
        return snap, CATEGORIES, dict(torch_peak_mb=0.0, params=1024, known_mb={})

    monkeypatch.setattr(ma, "record_step", fake_record)
    monkeypatch.setattr(ma, "read_inductor_site", fake_resolve)
    monkeypatch.setattr(ma, "environment", lambda: {"card": "fake", "command": "memory_attribution.py"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake Card")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history", lambda *a, **k: None)
    monkeypatch.delenv("TORCH_SYMBOLIZE_MODE", raising=False)
    assert ma.main(["--modes", "eager", "compile", "--top", "3", "--out", str(tmp_path)]) == 0
    path = tmp_path / "memory_attribution_Fake_Card_S2_2048_b4.json"
    report = __import__("json").loads(path.read_text())
    assert path.stat().st_size < 20_000
    assert [(r["family"], r["mode"]) for r in report["runs"]] == [("DiG", "eager"), ("DiT", "eager"),
                                                                   ("DiG", "compile"), ("DiT", "compile")]
    assert report["runs"][0]["peak_mb"] == round(26584 / 2**20, 3) and len(report["runs"][0]["groups"]) == 3
    assert report["runs"][1]["peak_mb"] == round(21584 / 2**20, 3)
    for mode in ("eager", "compile"):
        diff = report["differences"][mode]
        assert diff["groups"] == [{"key": "autograd MmBackward0", "DiG_mb": round(5000 / 2**20, 3),
                                   "DiT_mb": 0.0, "delta_mb": round(5000 / 2**20, 3)}]
    assert report["environment"]["card"] == "fake" and report["batch"] == 4
    assert "autograd MmBackward0" in capsys.readouterr().out


def test_counts_markers_and_trace_length(ma):
    r = ma.attribute_peak(snapshot(ma), categories=CATEGORIES, resolve=fake_resolve)
    assert r["start_markers"] == 2 and r["trace_events"] == len(snapshot(ma)["device_traces"][0])
    # the window starts at the second start marker: 2 + 3 + 1 + 1 events of the earlier step before it
    assert r["events"] == r["trace_events"] - 7


def test_autograd_node_names(ma):
    assert ma._autograd_node("torch::autograd::generated::MmBackward0::apply(std::vector<at::Tensor>&&)") == \
        "MmBackward0"
    assert ma._autograd_node("_ZN5torch8autograd9generated11MmBackward05applyEOSt6vectorIN2at6TensorESaIS5_EE") == \
        "MmBackward0"
    assert ma._autograd_node("_ZN5torch8autograd14AccumulateGrad5applyEOSt6vectorIN2at6TensorESaIS4_EE") == \
        "AccumulateGrad"
    assert ma._autograd_node("torch::autograd::Engine::evaluate_function(...)") is None
    assert ma._autograd_node("_ZN5torch8autograd6Engine17evaluate_functionE") is None
