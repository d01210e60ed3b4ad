"""What every benchmark needs: the machine's description, GPU timing, hardware ceilings, JSON output."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch


def _gla_triton_settings() -> dict | None:
    """``triton_chunk.CONFIG`` (after any ``GLADIFF_GLA_TRITON`` override), or None without Triton."""
    from ..ops._triton import HAS_TRITON

    if not HAS_TRITON:
        return None
    from ..ops.gla import triton_chunk

    return dict(triton_chunk.CONFIG)


def command_line() -> str:
    """This process's command line as typed: ``python -m gladiff ...`` for the module entry point
    (whose ``sys.argv[0]`` is the path of ``gladiff/__main__.py``), else the script's name and arguments."""
    head = sys.argv[0]
    if os.path.basename(head) == "__main__.py" and os.path.basename(os.path.dirname(head)) == "gladiff":
        head = "python -m gladiff"
    else:
        head = os.path.basename(head)
    return " ".join([head] + sys.argv[1:])


def environment() -> dict:
    """Card, library versions and the command line, stored with every number."""
    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": version("triton"),
        "flash_linear_attention": version("flash-linear-attention") or version("fla-core"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        # Launch configuration of our Triton GLA kernels: the override, and the configuration in force.
        "gla_triton_config": os.environ.get("GLADIFF_GLA_TRITON") or "default",
        "gla_triton_settings": _gla_triton_settings(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(card=props.name, sm_count=props.multi_processor_count,
                    memory_gb=round(props.total_memory / 2**30, 1))
    else:
        info["card"] = None
    return info


def gpu_time_ms(fn, warmup: int = 5, reps: int = 20) -> float:
    """Median wall time of ``fn()`` on the GPU in milliseconds (CUDA events around each call)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def capture_graph(fn, warmup: int = 3) -> torch.cuda.CUDAGraph:
    """Capture ``fn()`` (after warm-up on a side stream, as CUDA graphs require) into a graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def matmul_tflops(n: int = 8192, dtype=torch.bfloat16) -> float:
    """Measured dense matrix-product rate on random data (the ceiling for linear layers)."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    ms = gpu_time_ms(lambda: a @ b, warmup=3, reps=10)
    return 2 * n**3 / ms / 1e9


def copy_bandwidth_gbs(n_bytes: int = 2**31) -> float:
    """Device-to-device copy rate, bytes read plus written."""
    x = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    y = torch.empty_like(x)
    ms = gpu_time_ms(lambda: y.copy_(x), warmup=3, reps=10)
    return 2 * n_bytes / ms / 1e6


def write_json(path: str | Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path


def no_gpu_message(what: str) -> str:
    return f"{what}: no CUDA GPU on this machine; nothing measured (run it on a machine with a GPU)."
