"""Whole-model benchmark (docs/benchmark_protocol.md): DiG vs DiT training steps and sampling passes.

For each size (S/2, XL/2), resolution (latent = res / 8) and batch (``max(1, 32 * (256/res)^2)`` plus
any fixed batch), both families run under every execution mode asked for, and the best mode counts:

* ``eager``: plain PyTorch;
* ``compile``: ``torch.compile`` (default mode) over the whole model or block by block, under each
  of ``compile_scopes`` (see ``gladiff.models.compiled``; rows and the summary name a block-by-block
  run ``compile[blocks]``), the optimizer step eager;
* ``graph``: the whole step (forward, loss, backward, fused AdamW step) captured in one CUDA graph;
* ``compile+graph``: the compiled model, and the whole step around it captured in one CUDA graph.

DiT's attention is pinned to each SDPA backend in ``dit_attn`` (flash, cuDNN) in turn; DiG's GLA runs on
``backend="auto"`` (our Triton kernels on CUDA). bf16 autocast, TF32 on, random latents, median of
CUDA-event timings after warm-up; img/s, peak allocated memory, and the linear layers' rate: linear
FLOPs (forward + 2x for backward in a training step, counted on the meta device) per second of the
whole step, against the measured bf16 matmul ceiling.
"""
from __future__ import annotations

import contextlib
import gc
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..models import check_compile_scope, compile_model, create_model, uncompile_blocks
from ..models.flops import count_macs
from .common import gpu_time_ms, matmul_tflops

DEFAULT_RESOLUTIONS = list(range(256, 2049, 256))
MODES = ("eager", "compile", "graph", "compile+graph")


def default_batch(res: int) -> int:
    """About 8,192 latent tokens at patch 2: ``max(1, 32 * (256 / res)^2)``."""
    return max(1, int(32 * (256 / res) ** 2))


def _sdpa_context(attn: str | None):
    if attn is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[attn])


class _Case:
    """One model at one resolution and batch, with static inputs (graph-friendly)."""

    def __init__(self, family: str, size: str, res: int, batch: int, attn: str | None, gla_backend: str,
                 dwconv_backend: str = "auto"):
        latent = res // 8
        kwargs = {"gla_backend": gla_backend, "dwconv_backend": dwconv_backend} if family == "DiG" else {}
        self.name = f"{family}-{size}"
        self.model = create_model(self.name, input_size=latent, **kwargs).cuda()
        self.model.validate_inputs = False  # no host syncs inside timed / captured steps
        self.attn = attn
        C = self.model.in_channels
        self.x = torch.randn(batch, C, latent, latent, device="cuda")
        self.noise = torch.randn_like(self.x)
        self.t = torch.randint(0, 1000, (batch,), device="cuda").float()
        self.y = torch.randint(0, 1000, (batch,), device="cuda")
        self.opt = None

    def train_step(self, model):
        with _sdpa_context(self.attn), torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(self.x, self.t, self.y)
            loss = F.mse_loss(out[:, : self.model.in_channels].float(), self.noise)
        loss.backward()
        self.opt.step()

    def sample_step(self, model):
        with torch.no_grad(), _sdpa_context(self.attn), torch.autocast("cuda", dtype=torch.bfloat16):
            model(self.x, self.t, self.y)


def _measure(case: _Case, work: str, mode: str, reps: int, compile_scope: str = "model") -> dict:
    model = case.model
    if work == "train":
        model.train()
        case.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True,
                                     capturable=mode in ("graph", "compile+graph"))
    else:
        model.eval()
    compiled = mode in ("compile", "compile+graph")
    try:
        return _measure_with(case, work, mode, reps, compile_model(model, compile_scope) if compiled else model)
    finally:
        if compiled and compile_scope == "blocks":
            uncompile_blocks(model)  # the next mode measures the eager blocks again


def _measure_with(case: _Case, work: str, mode: str, reps: int, run_model) -> dict:
    step = (lambda: case.train_step(run_model)) if work == "train" else (lambda: case.sample_step(run_model))
    if work == "train":
        def once():
            case.opt.zero_grad(set_to_none=True)
            step()
    else:
        once = step
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    if mode in ("graph", "compile+graph"):
        # Warm up (compilation, autotuning, lazy optimizer state) on a side stream, then capture
        # one step with the gradients freshly allocated inside the graph's memory pool.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                once()
        torch.cuda.current_stream().wait_stream(side)
        if work == "train":
            case.opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        fn = graph.replay
    else:
        fn = once
    ms = gpu_time_ms(fn, warmup=3, reps=reps)
    peak = torch.cuda.max_memory_allocated() / 2**30
    return dict(ms=ms, peak_gb=peak, setup_s=time.time() - t0)


def _linear_flops(family: str, size: str, res: int, batch: int, work: str) -> float:
    with torch.device("meta"):
        m = create_model(f"{family}-{size}", input_size=res // 8)
    macs = count_macs(m, res // 8, batch=batch)["linear_conv"]
    return 2 * macs * (3 if work == "train" else 1)


def run_model_bench(models=("S/2", "XL/2"), resolutions=None, extra_batches=(), work=("train", "sample"),
                    modes=None, dit_attn=("flash", "cudnn"), reps=10, gla_backend="auto", dwconv_backend="auto",
                    compile_scopes=("model",), max_minutes: float | None = None, on_row=None,
                    families=("DiG", "DiT"), default_batches: bool = True) -> dict:
    """Returns ``{"matmul_tflops", "rows", "summary"}``; ``rows`` has one entry per measurement,
    ``summary`` the best mode per (size, res, batch, work, family) and the DiG/DiT ratios.
    ``on_row(result)`` is called after every measurement (e.g. to save partial results).
    ``families`` limits the run to DiG or DiT; ``default_batches=False`` measures only ``extra_batches``
    (e.g. the batch of a training run being compared with the bench)."""
    resolutions = list(resolutions or DEFAULT_RESOLUTIONS)
    modes = list(modes or MODES)
    families = tuple(families)
    if not families or not set(families) <= {"DiG", "DiT"}:
        raise ValueError(f"families must be DiG and/or DiT, got {families}")
    if not default_batches and not extra_batches:
        raise ValueError("no batch to measure: give extra batches, or keep the default batches")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; choose from {MODES}")
    for scope in compile_scopes:
        check_compile_scope(scope)
    # (mode, compile scope) pairs: a compiled mode once per scope.
    runs = [(m, scope) for m in modes for scope in (compile_scopes if "compile" in m else (None,))]
    for r in resolutions:
        if r % 16:
            raise ValueError(f"resolution {r} must be a multiple of 16 (latent res/8 with patch 2)")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    ceiling = matmul_tflops()
    jobs = []
    for size in models:
        for res in resolutions:
            for batch in sorted({*([default_batch(res)] if default_batches else []), *extra_batches}):
                for w in work:
                    jobs.append((size, res, batch, w))
    rows = []
    result = dict(matmul_tflops=ceiling, rows=rows, summary=[], dwconv_backend=dwconv_backend,
                  compile_scopes=list(compile_scopes))
    start = time.time()
    for size, res, batch, w in tqdm(jobs, desc="model bench"):
        flops = _linear_flops("DiG", size, res, batch, w), _linear_flops("DiT", size, res, batch, w)
        for family, lin in zip(("DiG", "DiT"), flops):
            if family not in families:
                continue
            for attn in (dit_attn if family == "DiT" else (None,)):
                case = None
                try:
                    case = _Case(family, size, res, batch, attn, gla_backend, dwconv_backend)
                    for mode, scope in runs:
                        if max_minutes is not None and time.time() - start > 60 * max_minutes:
                            raise TimeoutError(f"time budget of {max_minutes} min spent")
                        row = dict(family=family, size=size, res=res, batch=batch, work=w, mode=mode,
                                   attn=attn, compile_scope=scope)
                        try:
                            row.update(_measure(case, w, mode, reps, scope or "model"))
                            row["img_s"] = batch / row["ms"] * 1e3
                            row["linear_tflops"] = lin / row["ms"] / 1e9
                        except torch.cuda.OutOfMemoryError:
                            row["error"] = "out of memory"
                        except TimeoutError:
                            raise
                        except Exception as err:
                            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
                        rows.append(row)
                        print(_row_line(row), flush=True)
                        torch._dynamo.reset()
                        gc.collect()
                        torch.cuda.empty_cache()
                        result["summary"] = summarize(rows, ceiling)
                        if on_row:
                            on_row(result)
                except TimeoutError as err:
                    print(f"stopping: {err}")
                    result["summary"] = summarize(rows, ceiling)
                    return result
                except torch.cuda.OutOfMemoryError:
                    rows.append(dict(family=family, size=size, res=res, batch=batch, work=w, attn=attn,
                                     mode="setup", error="out of memory"))
                finally:
                    del case
                    gc.collect()
                    torch.cuda.empty_cache()
    result["summary"] = summarize(rows, ceiling)
    return result


def _row_line(r) -> str:
    what = f"{r['family']}-{r['size']} {r['res']}px b{r['batch']} {r['work']:6} {mode_label(r):21} {r.get('attn') or '':5}"
    if "error" in r:
        return f"{what} ERROR {r['error'][:120]}"
    return (f"{what} {r['img_s']:9.1f} img/s {r['ms']:8.2f} ms {r['peak_gb']:6.2f} GB "
            f"linear {r['linear_tflops']:6.1f} TFLOP/s")


def mode_label(row: dict) -> str:
    """The row's execution mode, with ``[blocks]`` when it was compiled block by block."""
    return row["mode"] + ("[blocks]" if row.get("compile_scope") == "blocks" else "")


def summarize(rows, ceiling: float) -> list[dict]:
    """Best mode per (size, res, batch, work, family) and DiG / DiT ratios from the same run."""
    best = {}
    for r in rows:
        if "error" in r or "img_s" not in r:
            continue
        key = (r["size"], r["res"], r["batch"], r["work"], r["family"])
        if key not in best or r["img_s"] > best[key]["img_s"]:
            best[key] = r
    out = []
    for (size, res, batch, work, family), r in sorted(best.items()):
        if family != "DiG":
            continue
        dit = best.get((size, res, batch, work, "DiT"))
        out.append(dict(size=size, res=res, batch=batch, work=work,
                        dig_img_s=r["img_s"], dig_mode=mode_label(r), dig_peak_gb=r["peak_gb"],
                        dig_linear_tflops=r["linear_tflops"], dig_linear_frac=r["linear_tflops"] / ceiling,
                        dit_img_s=dit and dit["img_s"], dit_mode=dit and f"{mode_label(dit)}/{dit['attn']}",
                        dit_peak_gb=dit and dit["peak_gb"],
                        speed_ratio=dit and r["img_s"] / dit["img_s"],
                        memory_ratio=dit and r["peak_gb"] / dit["peak_gb"]))
    return out


def format_rows(summary) -> str:
    lines = [f"{'size':5} {'res':>5} {'batch':>5} {'work':6} {'DiG img/s':>10} {'mode':21} {'GB':>6} "
             f"{'DiT img/s':>10} {'mode':27} {'GB':>6} {'DiG/DiT':>8} {'mem':>5} {'lin TF/s':>8}"]
    f = lambda x, p=1: "-" if x is None else f"{x:.{p}f}"
    for s in summary:
        lines.append(f"{s['size']:5} {s['res']:5d} {s['batch']:5d} {s['work']:6} {f(s['dig_img_s']):>10} "
                     f"{s['dig_mode']:21} {f(s['dig_peak_gb'], 2):>6} {f(s['dit_img_s']):>10} "
                     f"{str(s['dit_mode']):27} {f(s['dit_peak_gb'], 2):>6} {f(s['speed_ratio'], 2):>8} "
                     f"{f(s['memory_ratio'], 2):>5} {f(s['dig_linear_tflops']):>8}")
    return "\n".join(lines)


def plot_rows(summary, path) -> bool:
    """Throughput (log scale) and peak memory vs resolution, DiG vs DiT, per size and work."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return False
    if not summary:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = sorted({(s["size"], s["work"]) for s in summary})
    for i, (size, work) in enumerate(keys):
        sel = sorted((s for s in summary if (s["size"], s["work"]) == (size, work)
                      and s["batch"] == default_batch(s["res"])), key=lambda s: s["res"])
        if not sel:
            continue
        res = [s["res"] for s in sel]
        color = f"C{i}"
        # Lines only between neighbouring resolutions (256 apart): nothing is drawn where nothing was measured.
        joined = all(b - a == 256 for a, b in zip(res, res[1:]))
        dig, dit = ("-o", "--s") if joined else ("o", "s")
        ax1.plot(res, [s["dig_img_s"] for s in sel], dig, color=color, label=f"DiG-{size} {work}")
        ax1.plot(res, [s["dit_img_s"] or math.nan for s in sel], dit, color=color, mfc="none",
                 label=f"DiT-{size} {work}")
        if work == "train":
            ax2.plot(res, [s["dig_peak_gb"] for s in sel], dig, color=color, label=f"DiG-{size}")
            ax2.plot(res, [s["dit_peak_gb"] or math.nan for s in sel], dit, color=color, mfc="none",
                     label=f"DiT-{size}")
    ax1.set_yscale("log")
    ax1.set_xlabel("resolution (px)")
    ax1.set_ylabel("images / s (best execution mode)")
    ax1.set_title("throughput, batch max(1, 32 (256/res)^2)")
    ax2.set_xlabel("resolution (px)")
    ax2.set_ylabel("peak allocated GB (training step)")
    ax2.set_title("memory")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xticks(range(256, 2049, 256))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
