"""Scale-out on GPUs: DDP throughput and loss agreement at 256 px, FSDP + activation checkpointing at 2048 px.

    torchrun --standalone --nproc_per_node=N benchmarks/scale_out.py --out DIR   # N = 2, 4 or 8: every phase
    python benchmarks/scale_out.py --out DIR                                      # one GPU: the baselines alone

Every training step is the training loop's own (``gladiff.train``: ``sharding.prepare``, DDP from
``parallel.wrap_model``, bf16 autocast from ``Precision``, AdamW, gradient clipping, the EMA update)
on DiG-XL/2 with the DDPM objective, on random latents (4 channels, resolution / 8), TF32 on.

Phases (``--phases``, default all three; each is bounded in time, the whole run fits 10 minutes):

- ``throughput``: 256 px, ``--batch`` images per GPU. One GPU (rank 0 alone while the others wait),
  then DDP (and FSDP) on all N with the same per-GPU batch; per-GPU img/s and its ratio to one GPU
  (the issue's bar: >= 0.9 under DDP).
- ``losses``: the first ``--loss-steps`` losses of DDP on N GPUs against one GPU with the same global
  batch (N micro-batches of the per-GPU size, gradients accumulated), the same initial weights, and
  the same examples, timesteps, noise and label drops for every global index at every step.
- ``memory``: 2048 px, ``--memory-batch`` (2) images per GPU: one training step of the unsharded model
  on one GPU, then DDP + activation checkpointing, FSDP + activation checkpointing, FSDP alone, plain
  DDP; out-of-memory is caught and reported with the peak memory. The unsharded one-GPU case bounds
  plain DDP from below (DDP adds its gradient buckets), and the cases that may run out of memory run
  last because a rank that fails mid-step can leave the others waiting in a collective (the NCCL
  timeout, ``--nccl-timeout``, then ends the run; results so far are already written).

- ``resume`` (not in the default): one leg of a resume across GPU counts from one sharded checkpoint
  folder (``--resume-dir``), launched once per count (8, then 4, then 1): each leg loads the newest
  checkpoint with the training loop's ``restore``, checks that the state is identical to the one
  the writing leg saved, trains, writes the next checkpoint and compares the losses of the steps it
  retrains with the previous leg's (``phase_resume``).

``--compile blocks`` (with or without ``none``) repeats the throughput phase with every block compiled,
as ``gladiff train`` runs long jobs; ``+ac`` cases (``--throughput-modes fsdp+ac``) are compared with
one GPU with activation checkpointing. ``--summarize JSON...`` prints the tables (and the cost of the
paper's 1.2M x 256-image run at each measured rate). ``benchmarks/scale_out_x8.sh`` holds the 4/8-GPU
runs of issue 15.

The JSON (``DIR/scale_out_<card>_x<N>[_<tag>].json``, rewritten after every case) holds the card of every
rank, torch/CUDA/NCCL/fla versions, the GLA backend used, ``nvidia-smi topo -m``, the command line,
and every number. ``NCCL_NVLS_ENABLE=0`` is set before NCCL starts (NVLink multicast stays off).
``--smoke`` runs the same code on the CPU (gloo) with a tiny DiG, to check the script itself.
"""
from __future__ import annotations

import os

os.environ["NCCL_NVLS_ENABLE"] = "0"  # before any NCCL communicator exists

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.distributed as td  # noqa: E402
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,  # noqa: E402
                                                     get_state_dict)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gladiff import create_model  # noqa: E402
from gladiff.bench.common import environment as common_environment  # noqa: E402
from gladiff.diffusion import create_objective  # noqa: E402
from gladiff.ops.gla import resolve_backend  # noqa: E402
from gladiff.train import sharding  # noqa: E402
from gladiff.train.ema import EMA  # noqa: E402
from gladiff.train.parallel import Dist, all_gather_objects, pick_device, wrap_model  # noqa: E402
from gladiff.train.precision import Precision, set_tf32  # noqa: E402

LATENT_CHANNELS, NUM_CLASSES, DROP = 4, 1000, 0.1
PROBE_STEPS = 2  # untimed steps after the warm-up that size the timed run


# ----------------------------------------------------------------------------- processes
class World:
    """The process group of the run: ``dist`` (all ranks, NCCL or gloo) and a gloo group for
    waiting while rank 0 works alone (so a long one-GPU phase cannot trip the NCCL watchdog)."""

    def __init__(self, smoke: bool, nccl_timeout_s: float):
        n = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        device = pick_device("cpu" if smoke else "cuda", local)
        self.gloo = None
        if n > 1:
            if device.type == "cuda":
                torch.cuda.set_device(device)
                td.init_process_group("nccl", timeout=datetime.timedelta(seconds=nccl_timeout_s),
                                      device_id=device)
                self.gloo = td.new_group(backend="gloo", timeout=datetime.timedelta(hours=1))
            else:
                td.init_process_group("gloo", timeout=datetime.timedelta(seconds=nccl_timeout_s))
        self.dist = Dist(rank=rank, world_size=n, local_rank=local, device=device)
        self.alone = Dist(rank=0, world_size=1, local_rank=local, device=device)  # rank 0 by itself

    def wait(self):
        """Every rank meets here (the gloo group: no timeout for a long one-GPU phase)."""
        if self.dist.distributed:
            td.barrier(group=self.gloo)

    def max(self, value: float) -> float:
        if not self.dist.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.dist.device)
        td.all_reduce(t, op=td.ReduceOp.MAX)
        return float(t.item())

    def mean(self, value: torch.Tensor) -> float:
        if not self.dist.distributed:
            return float(value)
        t = value.detach().float().reshape(1).clone()
        td.all_reduce(t)
        return float(t.item()) / self.dist.world_size

    def broadcast(self, obj):
        if not self.dist.distributed:
            return obj
        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def close(self):
        if self.dist.distributed:
            td.destroy_process_group()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- the step under test
def initial_weights(args, latent: int) -> dict:
    """DiG-XL/2 (``--smoke``: a tiny DiG) for ``latent`` x ``latent`` latents: CPU state dict from
    seed 0, identical on every rank (FSDP shards each rank's own copy; nothing is broadcast)."""
    torch.manual_seed(0)
    return build(args, latent, device="cpu").state_dict()


def build(args, latent: int, device="cpu"):
    opts = dict(depth=2, hidden_size=64, num_heads=2) if args.smoke else {}
    with torch.device(device):
        return create_model(args.model, input_size=latent, in_channels=LATENT_CHANNELS,
                            num_classes=NUM_CLASSES, class_dropout_prob=DROP, **opts)


class Trainer:
    """One configuration of the training step: ``mode`` "single" (the unsharded model on this
    rank alone), "ddp" or "fsdp" over ``dist``; ``ac`` = activation checkpointing; ``compile`` =
    ``"none"`` or ``"blocks"`` (each block compiled in place, after sharding and inside DDP, as
    ``gladiff train --compile blocks`` and ``--compile auto`` do). Mirrors ``gladiff.train.loop``:
    autocast forward, backward, unscale/clip/AdamW step, EMA update."""

    def __init__(self, args, weights: dict, latent: int, dist: Dist, mode: str, ac: bool, compile: str = "none"):
        # Built on the meta device (no initialisation work: XL/2 takes seconds on a CPU), then given
        # copies of ``weights`` on this rank's device.
        model = build(args, latent, device="meta")
        model.load_state_dict({k: v.to(dist.device, copy=True) for k, v in weights.items()}, assign=True)
        model.train()
        # Label drops are drawn with the batch (so 1 and N GPUs drop the same labels): the label
        # embedder alone is in eval mode, where it drops none itself (its null-class row stays).
        model.y_embedder.eval()
        self.precision = Precision("bf16", dist.device)
        self.ema = EMA(model, 0.9999)
        model, self.ema.model = sharding.prepare(model, self.ema.model, dist, "fsdp" if mode == "fsdp" else "ddp",
                                                 ac, self.precision.dtype)
        self.model, self.dist = model, dist
        # DDP around the (compiled) model for "ddp"; FSDP and one process: the (compiled) model itself
        self.net = wrap_model(model, dist, compile)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
        self.objective = create_objective("ddpm")
        self.ac, self.mode = ac, mode

    def step(self, micro_batches) -> torch.Tensor:
        """One optimizer step over ``micro_batches`` (list of (x, y, t, noise) on the device; several
        only for the unsharded one-GPU model, whose gradients are then averaged over them); returns
        the mean loss (a device tensor)."""
        total = 0.0
        for x, y, t, noise in micro_batches:
            with self.precision.autocast():
                loss = self.objective.training_loss(self.net, x, y, t=t, noise=noise)["loss"]
            self.precision.backward(loss / len(micro_batches))
            total = total + loss.detach().float()
        self.precision.step(self.optimizer, self.model.parameters(), 0.0)  # the recipe: no clipping
        self.ema.update(self.model)
        return total / len(micro_batches)

    def close(self):
        del self.model, self.net, self.optimizer, self.ema
        gc.collect()
        if self.dist.device.type == "cuda":
            torch.cuda.empty_cache()


def global_batch(step: int, size: int, latent: int, seed: int = 0):
    """The global batch of ``step``: latents, labels (10% dropped to the null class), timesteps and
    noise for every global index, drawn on the CPU from (seed, step) alone, so any split over GPUs
    or micro-batches sees the same numbers."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    x = torch.randn(size, LATENT_CHANNELS, latent, latent, generator=g)
    y = torch.randint(0, NUM_CLASSES, (size,), generator=g)
    y = torch.where(torch.rand(size, generator=g) < DROP, torch.full_like(y, NUM_CLASSES), y)
    t = torch.randint(0, 1000, (size,), generator=g)
    noise = torch.randn(size, LATENT_CHANNELS, latent, latent, generator=g)
    return x, y, t, noise


def slices(batch, parts: int, device):
    """``batch`` cut into ``parts`` consecutive equal slices, moved to ``device``."""
    n = batch[0].shape[0] // parts
    return [tuple(a[i * n:(i + 1) * n].to(device, non_blocking=True) for a in batch) for i in range(parts)]


def global_step(world: World, trainer: Trainer, step: int, size: int, latent: int, parts: int) -> float:
    """One optimizer step on the global batch of ``step`` (``size`` examples) cut into ``parts`` equal
    slices: under several processes each rank trains on its own slice, one process accumulates them all
    as micro-batches. Returns the loss averaged over the ranks."""
    dist = trainer.dist
    cut = slices(global_batch(step, size, latent), parts, dist.device)
    loss = trainer.step([cut[dist.rank]] if dist.distributed else cut)
    return world.mean(loss) if dist.distributed else float(loss)


def timed_steps(world: World, trainer: Trainer, dist: Dist, per_gpu: int, latent: int, warmup: int,
                max_steps: int, seconds: float) -> dict:
    """Warm up, then time as many steps as fit ``seconds`` (at most ``max_steps``; every rank runs
    the same count). Returns img/s per GPU, step time, peak memory."""
    dev = dist.device
    batch = slices(global_batch(0, per_gpu * dist.world_size, latent), dist.world_size, dev)[dist.rank]
    t0 = time.perf_counter()
    for _ in range(warmup):  # compilation (--compile blocks), autotuning, the optimizer's lazy state
        trainer.step([batch])
    sync(dev)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(PROBE_STEPS):  # the step time that sizes the timed run (not the warm-up's)
        trainer.step([batch])
    sync(dev)
    per_step = (time.perf_counter() - t0) / PROBE_STEPS
    n = max(1, min(max_steps, int(seconds / max(per_step, 1e-6))))
    n = world.broadcast(n) if dist.distributed else n
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(n):
        loss = trainer.step([batch])
    sync(dev)
    elapsed = time.perf_counter() - t0
    elapsed = world.max(elapsed) if dist.distributed else elapsed
    return {"steps": n, "step_s": elapsed / n, "warmup_s": round(warmup_s, 1), "img_per_s_per_gpu": per_gpu * n / elapsed,
            "img_per_s_total": per_gpu * dist.world_size * n / elapsed, "last_loss": float(loss),
            **memory(dev)}


def memory(dev) -> dict:
    if dev.type != "cuda":
        return {"peak_allocated_gb": None, "peak_reserved_gb": None}
    return {"peak_allocated_gb": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2),
            "peak_reserved_gb": round(torch.cuda.max_memory_reserved(dev) / 2**30, 2)}


# ----------------------------------------------------------------------------- phases
def on_rank0_alone(world: World, args, report: dict, out: dict, key: str, work):
    """``out[key] = work()`` on rank 0 while the other ranks wait (on the gloo group, which has no
    short timeout), then the report written; returns rank 0's result on every rank."""
    if world.dist.is_main:
        out[key] = work()
    world.wait()
    write(args, report)
    out[key] = world.broadcast(out.get(key))
    return out[key]


def case_key(case: str, compile: str, world_size: int | None = None) -> str:
    """The JSON key of a throughput measurement: ``one_gpu``, ``one_gpu+ac``, ``ddp_x8``,
    ``fsdp+ac_x8``, with ``_compile-blocks`` when the blocks were compiled."""
    base = case.replace("single", "one_gpu") if world_size is None else f"{case}_x{world_size}"
    return base + ("" if compile == "none" else f"_compile-{compile}")


def phase_throughput(args, world: World, report: dict) -> None:
    """For each ``--compile``: one GPU alone (and with activation checkpointing, when a ``+ac`` case
    is asked for), then every ``--throughput-modes`` case on all N GPUs with the same per-GPU batch;
    each case's per-GPU rate as a share of one GPU's with the same checkpointing and compilation."""
    latent = args.resolution // 8
    weights = initial_weights(args, latent)
    out = report.setdefault("throughput", {"resolution": args.resolution, "per_gpu_batch": args.batch,
                                           "model": args.model})
    baselines = ["single"] + (["single+ac"] if any(c.endswith("+ac") for c in args.throughput_modes) else [])
    for compile in args.compile:
        for base in baselines:
            def one_gpu(base=base, compile=compile):
                trainer = Trainer(args, weights, latent, world.alone, "single", base.endswith("+ac"), compile)
                res = timed_steps(world, trainer, world.alone, args.batch, latent, args.warmup, args.max_steps,
                                  args.phase_seconds)
                trainer.close()
                say(f"throughput, 1 GPU{' + AC' if base.endswith('+ac') else ''}, compile {compile}: "
                    f"{res['img_per_s_per_gpu']:.1f} img/s")
                return res

            on_rank0_alone(world, args, report, out, case_key(base, compile), one_gpu)
        if not world.dist.distributed:
            continue
        for case in args.throughput_modes:
            mode, ac = case.split("+")[0], case.endswith("+ac")
            one = out[case_key("single+ac" if ac else "single", compile)]
            trainer = Trainer(args, weights, latent, world.dist, mode, ac, compile)
            res = timed_steps(world, trainer, world.dist, args.batch, latent, args.warmup, args.max_steps,
                              args.phase_seconds)
            trainer.close()
            res["per_gpu_vs_one_gpu"] = res["img_per_s_per_gpu"] / one["img_per_s_per_gpu"]
            out[case_key(case, compile, world.dist.world_size)] = res
            say(f"throughput, {case} x{world.dist.world_size}, compile {compile}: {res['img_per_s_per_gpu']:.1f} "
                f"img/s per GPU ({res['per_gpu_vs_one_gpu']:.3f} of one GPU), peak {res['peak_allocated_gb']} GB")
            write(args, report)


def phase_losses(args, world: World, report: dict) -> None:
    latent = args.resolution // 8
    n_gpu = world.dist.world_size if world.dist.distributed else args.simulate_gpus
    size = args.loss_batch * n_gpu
    out = report.setdefault("losses", {"resolution": args.resolution, "per_gpu_batch": args.loss_batch,
                                       "global_batch": size, "steps": args.loss_steps})
    weights = initial_weights(args, latent)

    def run(dist: Dist, mode: str, steps: int, seconds: float = float("inf")) -> list[float]:
        trainer = Trainer(args, weights, latent, dist, mode, False)
        losses, deadline = [], time.perf_counter() + seconds
        for step in range(steps):
            losses.append(global_step(world, trainer, step, size, latent, n_gpu))
            if time.perf_counter() > deadline and step >= 9:
                break  # only the one-GPU run (one process) stops on time; the others take its length
        trainer.close()
        return losses

    def one_gpu():  # N micro-batches = the same global batch
        losses = run(world.alone, "single", args.loss_steps, 2 * args.phase_seconds)
        say(f"losses, 1 GPU: {len(losses)} steps, first {losses[0]:.4f} last {losses[-1]:.4f}")
        return losses

    one = on_rank0_alone(world, args, report, out, "one_gpu", one_gpu)
    if not world.dist.distributed:
        return
    for mode in args.loss_modes:
        many = run(world.dist, mode, len(one))
        rel = [abs(a - b) / abs(b) for a, b in zip(many, one)]
        out[f"{mode}_x{world.dist.world_size}"] = {
            "losses": many, "max_rel_diff": max(rel), "mean_rel_diff": sum(rel) / len(rel),
            "rel_diff_first_10": rel[:10]}
        say(f"losses, {mode} x{world.dist.world_size} vs 1 GPU: max rel diff {max(rel):.2e}, "
            f"mean {sum(rel) / len(rel):.2e}")
        write(args, report)


def phase_memory(args, world: World, report: dict) -> None:
    latent = args.memory_resolution // 8
    out = report.setdefault("memory", {"resolution": args.memory_resolution, "per_gpu_batch": args.memory_batch,
                                       "cases": {}})
    if world.dist.device.type == "cuda":
        out["card_memory_gb"] = round(torch.cuda.get_device_properties(world.dist.device).total_memory / 2**30, 1)
    weights = initial_weights(args, latent)
    cases = [c for c in args.memory_cases if world.dist.distributed or c.startswith("single")]
    for case in cases:
        mode, ac = case.split("+")[0], case.endswith("+ac")
        alone = mode == "single"
        if alone and not world.dist.is_main:
            world.wait()
            out["cases"][case] = world.broadcast(None)
            continue
        dist = world.alone if alone else world.dist
        res = try_steps(args, world, weights, latent, dist, mode, ac)
        if alone:
            world.wait()
            out["cases"][case] = world.broadcast(res)
        else:
            out["cases"][case] = res
        say(f"memory {args.memory_resolution}px batch {args.memory_batch}/GPU, {case}: "
            + ("fits" if res["fits"] else "OUT OF MEMORY") + f", peak {res['peak_allocated_gb']} GB")
        write(args, report)


def tensor_fingerprint(t: torch.Tensor) -> tuple[int, int]:
    """Two exact integer sums over ``t``'s raw 16-bit words ``w_i``: ``sum w_i`` and
    ``sum w_i * (i mod 65521 + 1)``, computed where ``t`` lives (a GPU: milliseconds for a tensor
    that SHA-256 would need a host copy and seconds for). Integer sums do not depend on the order of
    the reduction, so equal tensors give equal pairs on any device; any single changed word changes
    the first sum. (Bounds: |w| < 2^15, weights <= 2^16, so no int64 overflow below 2^32 words.)"""
    flat = t.detach().contiguous().reshape(-1)
    words = flat.view(torch.int16) if flat.numel() * flat.element_size() % 2 == 0 else flat.view(torch.uint8)
    words = words.to(torch.int64)
    weights = torch.arange(words.numel(), device=words.device) % 65521 + 1
    return int(words.sum()), int((words * weights).sum())


def state_digest(trainer: Trainer, dist: Dist) -> str | None:
    """A digest of the model, EMA and optimizer state as full (unsharded) tensors keyed by parameter
    name, the layout-independent form checkpoints store (a collective under FSDP: every rank gathers
    the full tensors on its GPU; the digest on rank 0, ``None`` elsewhere): SHA-256 over every
    tensor's name, dtype, shape and ``tensor_fingerprint``, and every other value's ``repr``. Equal
    digests = the same training state, whatever the sharding."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=False)
    model_sd, optim_sd = get_state_dict(trainer.model, trainer.optimizer, options=opts)
    ema_sd = get_model_state_dict(trainer.ema.model, options=opts)
    if not dist.is_main:
        return None
    h = hashlib.sha256()

    def feed(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k in sorted(value, key=str):
                feed(f"{prefix}/{k}", value[k])
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                feed(f"{prefix}/{i}", v)
        elif isinstance(value, torch.Tensor):
            h.update(f"{prefix}:{value.dtype}:{tuple(value.shape)}:{tensor_fingerprint(value)}".encode())
        else:
            h.update(f"{prefix}={value!r}".encode())

    feed("model", model_sd)
    feed("ema", ema_sd)
    feed("optimizer", optim_sd)
    return h.hexdigest()


def phase_resume(args, world: World, report: dict) -> None:
    """One leg of a resume across GPU counts, from the same sharded checkpoint folder
    (``--resume-dir``). Launch it several times with different process counts (8, then 4, then 1):

    - a leg loads the newest checkpoint there with the training loop's own ``restore`` (FSDP over
      all processes; one process: a plain model), or starts from the initial weights if there is none;
    - it checks that the loaded state is the one the writing leg saved (``state_digest`` of the full
      model, EMA and optimizer state, recorded in ``resume_record.json`` beside the checkpoints);
    - it trains ``2 * --resume-steps`` steps on the fixed global batch (``--resume-batch`` split over
      the processes; one process: micro-batches of ``--loss-batch``), writing a sharded checkpoint
      (``sharded_checkpoint.save``) after the first ``--resume-steps``;
    - so the next leg, loaded from that checkpoint, retrains this leg's last ``--resume-steps`` steps:
      their losses are compared (they differ only by the order of floating-point reductions)."""
    from gladiff.train import checkpoint, sharded_checkpoint
    from gladiff.train.config import TrainConfig
    from gladiff.train.data_order import DataPosition
    from gladiff.train.loop import TrainState, restore

    latent, dist = args.resolution // 8, world.dist
    n, size, k = dist.world_size, args.resume_batch, args.resume_steps
    if size % n or (n == 1 and size % args.loss_batch):
        raise SystemExit(f"--resume-batch {size} must split evenly over {n} process(es)"
                         + (f" and into micro-batches of --loss-batch {args.loss_batch}" if n == 1 else ""))
    run_dir = Path(args.resume_dir)
    record_path = run_dir / "resume_record.json"
    trainer = Trainer(args, initial_weights(args, latent), latent, dist, "fsdp" if dist.distributed else "single",
                      False)
    cfg = TrainConfig(run_dir=str(run_dir), model=args.model, image_size=args.resolution, data="latents:random",
                      global_batch_size=size, parallel="fsdp", precision="bf16", ema_decay=0.9999, lr=1e-4)
    spec = {"name": args.model, "input_size": latent, "in_channels": LATENT_CHANNELS, "num_classes": NUM_CLASSES,
            "learn_sigma": True, "overrides": {}}
    info = {"in_channels": LATENT_CHANNELS, "sample_size": latent, "num_classes": NUM_CLASSES, "is_latent": True}
    state = TrainState(cfg, spec, info, trainer.model, trainer.ema, trainer.optimizer, trainer.precision)

    legs = json.loads(record_path.read_text()) if record_path.exists() else []
    found = checkpoint.newest_valid_checkpoint(run_dir)
    leg = {"world_size": n, "mode": trainer.mode, "loaded": None}
    start = 0
    if found is not None:
        start, _ = restore(found, state, dist)
        digest = state_digest(trainer, dist)
        saved = next((g["saved"] for g in reversed(legs) if g.get("saved", {}).get("step") == start), None)
        leg["loaded"] = {"path": found[0].name, "step": start, "digest": digest,
                         "written_by": len(found[1]["rng"]), "saved_digest": saved and saved["digest"],
                         "identical": bool(saved) and digest == saved["digest"]}
        if dist.is_main:
            say(f"resume: {n} process(es) loaded {found[0].name} (written by {len(found[1]['rng'])}): state "
                + ("identical to the one saved" if leg["loaded"]["identical"] else "DIFFERS from the one saved"))
    losses = {}
    for step in range(start, start + 2 * k):
        losses[step] = global_step(world, trainer, step, size, latent, n if dist.distributed else size // args.loss_batch)
        if step + 1 == start + k:
            rng = all_gather_objects(dist, checkpoint.capture_rng())
            path = sharded_checkpoint.save(run_dir, step + 1, DataPosition(index=(step + 1) * size), rng, state, dist)
            leg["saved"] = {"path": path.name, "step": step + 1, "digest": state_digest(trainer, dist)}
    trainer.close()
    leg["losses"] = {str(s_): v for s_, v in losses.items()}
    before = legs[-1]["losses"] if legs else {}
    shared = [s_ for s_ in leg["losses"] if s_ in before]
    if shared:
        rel = [abs(leg["losses"][s_] - before[s_]) / abs(before[s_]) for s_ in shared]
        leg["vs_previous_leg"] = {"steps": [int(s_) for s_ in shared], "max_rel_diff": max(rel),
                                  "mean_rel_diff": sum(rel) / len(rel)}
        say(f"resume: losses of steps {shared[0]}-{shared[-1]} vs the previous leg's "
            f"({legs[-1]['world_size']} process(es)): max rel diff {max(rel):.2e}")
    if dist.is_main:
        legs.append(leg)
        record_path.write_text(json.dumps(legs, indent=1))
    report["resume"] = {"resolution": args.resolution, "global_batch": size, "resume_steps": k,
                        "dir": str(run_dir), "legs": legs}


def try_steps(args, world: World, weights, latent, dist: Dist, mode: str, ac: bool) -> dict:
    """Build and run ``args.memory_steps`` training steps; out-of-memory is caught and reported."""
    dev = dist.device
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    trainer, res = None, {"mode": mode, "activation_checkpointing": ac, "world_size": dist.world_size}
    try:
        trainer = Trainer(args, weights, latent, dist, mode, ac)
        batch = slices(global_batch(0, args.memory_batch * dist.world_size, latent), dist.world_size,
                       dev)[dist.rank if dist.distributed else 0]
        times = []
        for _ in range(args.memory_steps):
            sync(dev)
            t0 = time.perf_counter()
            trainer.step([batch])
            sync(dev)
            times.append(time.perf_counter() - t0)
        res.update(fits=True, step_s=times[-1], first_step_s=times[0])
    except torch.OutOfMemoryError as err:
        res.update(fits=False, error=str(err).splitlines()[0][:300])
    res.update(memory(dev))
    if trainer is not None:
        trainer.close()
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    if dist.distributed:  # every rank must have got the same answer to go on together
        res["fits"] = world.max(0.0 if res["fits"] else 1.0) == 0.0
    return res


# ----------------------------------------------------------------------------- the record
def environment(args, world: World) -> dict:
    """``gladiff.bench.common.environment()`` (date, versions, card) plus every rank's card, the
    launch, NCCL, the GLA backend and the model."""
    dev = world.dist.device
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    cards = [card]
    if world.dist.distributed:
        cards = [None] * world.dist.world_size
        td.all_gather_object(cards, card)
    info = common_environment()
    info.update({
        "command": " ".join(([f"torchrun --nproc_per_node={world.dist.world_size}"] if world.dist.distributed
                             else ["python"]) + ["benchmarks/scale_out.py"] + args.argv),
        "host": socket.gethostname(), "world_size": world.dist.world_size, "cards": cards,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if dev.type == "cuda" else None,
        "gla_backend": resolve_backend("auto", dev),
        "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE"),
        "model": args.model + (" (smoke: depth 2, width 64)" if args.smoke else ""),
        "objective": "ddpm (learned sigma), AdamW lr 1e-4, no clipping, EMA 0.9999",
        "precision": "bf16 autocast, fp32 master weights, TF32 on",
    })
    if dev.type == "cuda":
        info["card_memory_gb"] = round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1)
        try:
            info["nvidia_smi_topo"] = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True,
                                                     timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            info["nvidia_smi_topo"] = None
    return info


def say(text: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[scale_out {time.strftime('%H:%M:%S')}] {text}", flush=True)


def write(args, report: dict) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    card = (report["environment"]["cards"][0] or "cpu").replace(" ", "_").replace("/", "_")
    tag = f"_{args.tag}" if args.tag else ""
    path = Path(args.out) / f"scale_out_{card}_x{report['environment']['world_size']}{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- summary
PAPER_IMAGES = 1_200_000 * 256  # the paper's DiG-XL/2 ImageNet-256 run: 1.2M steps of 256 images


def paper_run_cost(img_per_s_total: float, world_size: int) -> dict:
    """Days and GPU-hours of the paper's run at ``img_per_s_total`` images/s over ``world_size`` GPUs."""
    hours = PAPER_IMAGES / img_per_s_total / 3600
    return {"days": hours / 24, "gpu_hours": hours * world_size}


def summarize(paths: list[str]) -> str:
    """Markdown from result JSONs: every throughput measurement (per-GPU img/s, share of one GPU,
    peak memory, and at 256 px what the paper's run would take at that rate on that many GPUs), the
    loss agreement and the resume legs."""
    lines = []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
            env, tp = report["environment"], report.get("throughput")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SystemExit(f"--summarize: {path} is not a scale_out.py result JSON ({type(err).__name__}: {err})")
        lines.append(f"\n**{Path(path).name}**: {env['world_size']} x {env['cards'][0]}, {env.get('model')}, "
                     f"torch {env.get('torch')}, {env.get('date', '')[:10]}\n")
        if tp:
            lines += [f"| {tp['resolution']} px, {tp['per_gpu_batch']} per GPU | step ms | img/s per GPU | of one GPU "
                      "| peak GB | paper run (1.2M x 256): days, GPU-hours |", "|---|---|---|---|---|---|"]
            for key, r in tp.items():
                if not isinstance(r, dict):
                    continue
                world = int(key.split("_x")[1].split("_")[0]) if "_x" in key else 1
                cost = paper_run_cost(r["img_per_s_total"], world) if tp["resolution"] == 256 else None
                lines.append(f"| {key} | {1000 * r['step_s']:.1f} | {r['img_per_s_per_gpu']:.1f} | "
                             f"{r.get('per_gpu_vs_one_gpu', 1.0):.3f} | {r['peak_allocated_gb']} | "
                             + (f"{cost['days']:.1f}, {cost['gpu_hours']:,.0f} |" if cost else "- |"))
            lines.append("")
        for key, r in report.get("losses", {}).items():
            if isinstance(r, dict):
                lines.append(f"- losses, {key} vs one GPU ({report['losses']['global_batch']} per step, "
                             f"{len(r['losses'])} steps): max relative difference {r['max_rel_diff']:.2e}, "
                             f"mean {r['mean_rel_diff']:.2e}")
        for leg in report.get("resume", {}).get("legs", []):
            loaded, cmp = leg.get("loaded"), leg.get("vs_previous_leg")
            lines.append(f"- resume leg, {leg['world_size']} process(es) ({leg['mode']}): "
                         + (f"loaded {loaded['path']} written by {loaded['written_by']}, "
                            + ("identical" if loaded["identical"] else "NOT identical") + " to the saved state"
                            if loaded else "from scratch")
                         + (f"; losses of steps {cmp['steps'][0]}-{cmp['steps'][-1]} vs the previous leg: max "
                            f"relative difference {cmp['max_rel_diff']:.2e}" if cmp else ""))
    return "\n".join(lines)


PHASES = {"throughput": phase_throughput, "losses": phase_losses, "memory": phase_memory, "resume": phase_resume}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results",
                   help="folder for the JSON (default: $OUT, else benchmarks/results)")
    p.add_argument("--phases", nargs="+", default=["throughput", "losses", "memory"],
                   choices=list(PHASES), help="what to run (default: throughput losses memory; resume "
                   "is one leg of a resume across GPU counts, launched once per count)")
    p.add_argument("--model", default="DiG-XL/2")
    p.add_argument("--resolution", type=int, default=256, help="pixels, throughput and losses phases")
    p.add_argument("--batch", type=int, default=32, help="images per GPU, throughput phase")
    p.add_argument("--throughput-modes", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "ddp+ac", "fsdp", "fsdp+ac"],
                   help="the N-GPU cases (+ac: activation checkpointing)")
    p.add_argument("--compile", nargs="+", default=["none"], choices=["none", "blocks"],
                   help="throughput phase: eager and/or each block compiled (what gladiff train's --compile "
                        "auto switches to on long runs); every case and its one-GPU baseline run under each")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=30, help="timed steps at most per measurement")
    p.add_argument("--phase-seconds", type=float, default=40.0,
                   help="time for the timed steps of one measurement (the losses phase gets twice this per run)")
    p.add_argument("--loss-steps", type=int, default=50)
    p.add_argument("--loss-batch", type=int, default=16, help="images per GPU, losses phase")
    p.add_argument("--loss-modes", nargs="+", default=["ddp"], choices=["ddp", "fsdp"])
    p.add_argument("--simulate-gpus", type=int, default=2,
                   help="one process: the number of GPUs whose global batch the losses baseline uses")
    p.add_argument("--memory-resolution", type=int, default=2048)
    p.add_argument("--memory-batch", type=int, default=2, help="images per GPU, memory phase")
    p.add_argument("--memory-steps", type=int, default=2)
    p.add_argument("--memory-cases", nargs="+",
                   default=["single", "single+ac", "ddp+ac", "fsdp+ac", "fsdp", "ddp"],
                   choices=["single", "single+ac", "ddp", "ddp+ac", "fsdp", "fsdp+ac"],
                   help="run in this order; single = the unsharded model on one GPU")
    p.add_argument("--resume-dir", default="runs/scale_out_resume",
                   help="resume phase: the checkpoint folder every leg reads from and writes to")
    p.add_argument("--resume-steps", type=int, default=5,
                   help="resume phase: steps before the leg's checkpoint (it trains twice this)")
    p.add_argument("--resume-batch", type=int, default=None,
                   help="resume phase: the global batch, the same in every leg (default 64; --smoke: 8)")
    p.add_argument("--tag", default="", help="appended to the JSON's name (scale_out_<card>_x<N>_<tag>.json)")
    p.add_argument("--nccl-timeout", type=float, default=240.0,
                   help="seconds before a collective that a failed rank never joins ends the run")
    p.add_argument("--smoke", action="store_true", help="CPU + gloo, tiny DiG: checks the script, measures nothing")
    p.add_argument("--summarize", nargs="+", metavar="JSON", help="print Markdown tables of result JSONs and exit")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    if args.smoke:
        args.resolution, args.memory_resolution = 64, 64
        args.batch, args.loss_batch, args.memory_batch = 2, 2, 2
        args.warmup, args.max_steps, args.loss_steps = 1, 2, 3
        args.resume_steps = 2
    if args.resume_batch is None:  # splits over 1, 2, 4 and 8 processes
        args.resume_batch = 8 if args.smoke else 64
    if not args.smoke and not torch.cuda.is_available():
        print("scale_out: no CUDA GPU here (use --smoke to check the script on a CPU)")
        return 0
    set_tf32(True)
    world = World(args.smoke, args.nccl_timeout)
    torch.set_num_threads(max(1, torch.get_num_threads() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))
    report = {"environment": environment(args, world)}
    say(f"{report['environment']['world_size']} x {report['environment']['cards'][0]}, "
        f"GLA backend {report['environment']['gla_backend']}; writing to {args.out}")
    write(args, report)
    started = time.perf_counter()
    for phase, run in PHASES.items():
        if phase in args.phases:
            t0 = time.perf_counter()
            run(args, world, report)
            report.setdefault("phase_seconds", {})[phase] = round(time.perf_counter() - t0, 1)
            write(args, report)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    write(args, report)
    say(f"done in {report['total_seconds']} s")
    world.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
