"""The training loop. Read it top to bottom: every feature is one call into a component.

Components: ``RunLock`` (one trainer per run folder), ``parallel`` (processes, DDP, ``torch.compile``),
``autocompile`` (``--compile auto``), ``sharding`` (FSDP2, activation checkpointing), ``sharded_checkpoint``
(FSDP checkpoints), ``data_order`` (resumable example order, loader workers), ``precision`` (autocast,
loss scaling, clipping), ``EMA``, ``checkpoint`` (atomic checksummed files, resume, pruning), ``RunLog``
(bar, TensorBoard, metrics), ``StopSignals`` (SIGTERM/SIGINT), ``StepChecks`` (NaN and stop checks
without a GPU sync per step), and ``gladiff.sample`` for grids.

Nothing in a step reads a GPU value on the host except on the steps that log, check or write, so the
CPU prepares the next step while the GPU runs this one.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gladiff.errors import check_writable_dir, writing
from gladiff.models.payback import options_for

from . import checkpoint, parallel, sharded_checkpoint, sharding
from .autocompile import AutoCompile, resolve_compile
from .build import build_dataset, build_model, build_objective, data_info, model_spec
from .checks import StepChecks
from .config import TrainConfig, save_config
from .data_order import BatchStream, DataPosition, batch_loader, resolve_num_workers
from .ema import EMA
from .observe import RunLog
from .precision import Precision, set_tf32
from .run_lock import RunLock
from .signals import StopSignals


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stopped without writing a checkpoint."""


@dataclass
class TrainResult:
    step: int  # optimizer steps done
    checkpoint: Path | None  # the newest checkpoint on disk
    stopped_by: str = ""  # "SIGTERM"/"SIGINT" when a signal ended the run early


@dataclass
class TrainState:
    """What a checkpoint holds besides the step and data position: the run's objects and descriptions."""

    cfg: TrainConfig
    spec: dict  # model spec (zoo name, sizes, overrides): rebuilds the model without the data
    info: dict  # data facts sampling needs (channels, size, classes, pixel or latent, VAE)
    model: torch.nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    precision: Precision


def train(cfg: TrainConfig, *, dataset=None, objective=None, model_builder=build_model,
          progress: bool = True) -> TrainResult:
    """Train as ``cfg`` says; ``dataset``/``objective``/``model_builder`` replace the ones built
    from the config (tests pass small stand-ins). Returns where the run ended."""
    cfg.validate()
    # Before any work, and before the lock file is written into it: an unwritable folder would
    # otherwise surface only at the first save.
    check_run_dir(Path(cfg.run_dir))
    dist = parallel.init_distributed(cfg.device)
    try:
        with RunLock(cfg.run_dir, dist):  # a second trainer on this run folder is refused
            result = _train(cfg, dist, dataset, objective, model_builder, progress)
    except BaseException:
        parallel.shutdown(dist, wait=False)  # other ranks may be gone: no barrier
        raise
    parallel.shutdown(dist)
    return result


def _train(cfg, dist, dataset, objective, model_builder, progress) -> TrainResult:
    run_dir = Path(cfg.run_dir)
    set_tf32(cfg.tf32)
    seed_everything(cfg.seed)  # same initial weights on every rank and for every world size

    # ---- what is trained, on what
    dataset = build_dataset(cfg) if dataset is None else dataset
    objective = build_objective(cfg.objective, cfg.objective_opts) if objective is None else objective
    info = data_info(dataset)
    spec = model_spec(cfg, info, objective.learn_sigma)
    model = model_builder(spec).to(dist.device)
    ema, precision = EMA(model, cfg.ema_decay), Precision(cfg.precision, dist.device)
    # Activation checkpointing, FSDP sharding of the model and its EMA: before the optimizer sees them.
    model, ema.model = sharding.prepare(model, ema.model, dist, cfg.parallel, cfg.activation_checkpointing,
                                        precision.dtype)
    state = TrainState(cfg, spec, info, model, ema,
                       torch.optim.AdamW(model.parameters(), **adamw_options(cfg, dist.device)), precision)
    optimizer = state.optimizer

    # ---- where it starts: fresh, or exactly where the newest valid checkpoint left off
    step, position = 0, DataPosition()
    seed_everything(rank_seed(cfg.seed, dist.rank))  # per-rank noise / timesteps / label dropout
    found = _find_resume_point(cfg, run_dir)
    if found is not None:
        step, position = restore(found, state, dist)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    parallel.barrier(dist)

    stream = BatchStream(len(dataset), cfg.global_batch_size, cfg.seed, dist.rank, dist.world_size,
                         position)
    worker_seed = torch.Generator().manual_seed(rank_seed(cfg.seed, dist.rank) + step)
    workers = resolve_num_workers(cfg.num_workers, dataset, dist.device.type,
                                  int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    batches = iter(batch_loader(dataset, stream, workers, dist.device.type == "cuda", worker_seed))
    # What runs the forward pass: compiled (--compile) after FSDP sharding, inside DDP (see wrap_model).
    # The optimizer, the EMA and checkpoints keep using `model`: its parameters and state-dict keys.
    compile = resolve_compile(cfg.compile, dist.device)
    net = parallel.wrap_model(model, dist, "none" if compile == "auto" else compile)
    # Labels are checked on the host copy of each batch (check_labels): the model's own check of
    # the device copy would make the CPU wait for the GPU at every step.
    if hasattr(model, "validate_inputs"):
        model.validate_inputs = False
    log = RunLog(run_dir, dist, step, cfg.steps, cfg.global_batch_size, cfg.log_every,
                 cfg.tensorboard, progress)
    auto = AutoCompile(model, dist, options_for("train", cfg.model) if compile == "auto" else {}, step,
                       cfg.steps, log.message)
    grids = SampleGrids(run_dir / "samples", objective, info, cfg, precision, dist)
    ema_full = sharding.FullCopy(lambda: model_builder(spec), dist)  # FSDP: grids sample a gathered copy
    log.message(f"{spec['name']} ({sum(p.numel() for p in model.parameters()):,} parameters), "
                f"{type(objective).__name__}, {precision.name}, {dist.world_size} process(es) "
                f"on {dist.device}, {'resuming at step %d' % step if step else 'from scratch'}")
    last_ckpt = found[0] if found is not None else None
    stopped_by = ""

    # ---- the loop
    with StopSignals() as stop:
        checks = StepChecks(dist, stop)
        try:
            while step < cfg.steps:
                x, y = next(batches)
                check_labels(y, info["num_classes"])
                x = x.to(dist.device, non_blocking=True)
                y = y.to(dist.device, non_blocking=True)
                lr = set_lr(optimizer, cfg, step)
                with precision.autocast():
                    loss = objective.training_loss(net, x, y)["loss"]
                precision.backward(loss)
                grad_norm = precision.step(optimizer, model.parameters(), cfg.grad_clip,
                                           measure_norm=log.due(step + 1))
                ema.update(model)
                step += 1
                position = stream.advance(position)
                checks.record(step, loss)
                writes = (step == cfg.steps or _due(step, cfg.ckpt_every) or _due(step, cfg.sample_every)
                          or log.due(step))
                first_bad, stopping = checks.poll(step, force=writes)
                if first_bad is not None:
                    bad_step, value = first_bad
                    raise NonFiniteLossError(
                        f"the loss became non-finite at step {bad_step} (here: {value}); "
                        "stopping without saving. "
                        f"Last good checkpoint: {last_ckpt or 'none'}. Lower --lr, set --grad-clip, "
                        "or use --precision fp32/bf16 instead of fp16.")
                log.step(step, loss, grad_norm, lr)
                auto.after_step(step)

                if stopping or step == cfg.steps or _due(step, cfg.ckpt_every):
                    last_ckpt = save(run_dir, step, position, state, dist)
                if _due(step, cfg.sample_every):
                    with ema_full.of(ema.model) as ema_model:
                        grids.write(step, ema_model)
                if stopping:
                    stopped_by = stop.name
                    log.message(f"{stopped_by} received: saved {last_ckpt} at step {step}; exiting")
                    break
        finally:
            log.close()
    return TrainResult(step=step, checkpoint=last_ckpt, stopped_by=stopped_by)


# ----------------------------------------------------------------------------- pieces the loop calls
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def adamw_options(cfg: TrainConfig, device: torch.device) -> dict:
    """AdamW's arguments: the config's hyperparameters, and on a CUDA device the fused kernel (one
    launch for all parameters, as ``gladiff bench`` times it) unless FSDP shards the parameters."""
    opts = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    if device.type == "cuda" and cfg.parallel != "fsdp":
        opts["fused"] = True
    return opts


def check_labels(y: torch.Tensor, num_classes: int) -> None:
    """``ValueError`` unless every label of the host batch ``y`` lies in ``[0, num_classes)``."""
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"the data gave labels in [{int(y.min())}, {int(y.max())}], outside the "
                         f"{num_classes} classes the model is built for")


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random stream (distinct per rank, fixed per run)."""
    return int(seed) * 10_007 + 1 + int(rank)


def set_lr(optimizer, cfg: TrainConfig, step: int) -> float:
    """Constant learning rate after an optional linear warm-up; returns the value set."""
    lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _find_resume_point(cfg: TrainConfig, run_dir: Path):
    existing = checkpoint.list_checkpoints(run_dir)
    if not cfg.resume:
        if existing:
            raise ValueError(f"{run_dir} already holds checkpoints (newest {existing[0].name}); "
                             "pass --resume to continue that run, or choose another --run-dir")
        return None
    found = checkpoint.newest_valid_checkpoint(run_dir)
    if found is None and existing:
        raise ValueError(f"--resume: none of the {len(existing)} checkpoints in {run_dir} is readable")
    return found  # None: nothing to resume, start from scratch


def check_run_dir(run_dir: Path) -> None:
    """``StorageError`` unless the run folder (and its checkpoint folder, if there is one) can be
    written (or created)."""
    check_writable_dir(run_dir, "run folder")
    if checkpoint.checkpoint_dir(run_dir).exists():
        check_writable_dir(checkpoint.checkpoint_dir(run_dir), "checkpoint folder")


def save(run_dir: Path, step: int, position: DataPosition, state: TrainState, dist) -> Path | None:
    """Write the checkpoint of ``step`` (rank 0; every rank contributes its RNG state; under FSDP
    every rank writes its shards) and prune older ones; returns its path on every rank. A full disk
    is a ``StorageError`` saying so (earlier checkpoints stay intact: every write goes to a
    temporary file first)."""
    with writing(f"the checkpoint of step {step}", checkpoint.checkpoint_dir(run_dir),
                 then="continue with --resume (earlier checkpoints are intact)"):
        return _save(run_dir, step, position, state, dist)


def _save(run_dir: Path, step: int, position: DataPosition, state: TrainState, dist) -> Path | None:
    rng = parallel.all_gather_objects(dist, checkpoint.capture_rng())
    if state.cfg.parallel == "fsdp":  # every rank writes its shards
        path = sharded_checkpoint.save(run_dir, step, position, rng, state, dist)
    elif dist.is_main:
        payload = {
            "format": checkpoint.FORMAT, "step": step, "model": state.model.state_dict(),
            "ema": state.ema.state_dict(), "optimizer": state.optimizer.state_dict(),
            "scaler": state.precision.state_dict(), "data": position.state_dict(), "rng": rng,
            "config": state.cfg.to_dict(), "model_spec": state.spec, "data_info": state.info,
            "complete": True,
        }
        path = checkpoint.atomic_save(payload, checkpoint.checkpoint_path(run_dir, step), checksum=True)
    if dist.is_main:
        checkpoint.prune(run_dir, state.cfg.keep_ckpts, just_written=path)
    parallel.barrier(dist)
    return parallel.broadcast_object(dist, path if dist.is_main else None)


def restore(found: tuple[Path, dict], state: TrainState, dist) -> tuple[int, DataPosition]:
    """Load a checkpoint into the run's objects; returns ``(step, data position)``."""
    path, saved = found
    checkpoint.check_model_spec(saved["model_spec"], state.spec, path)
    if sharded_checkpoint.handles(saved, state.model):  # a sharded checkpoint, or a sharded model
        sharded_checkpoint.load_training_state(saved, state)
    else:
        checkpoint.load_model_state(state.model, saved["model"], what=f"checkpoint {path}")
        checkpoint.load_model_state(state.ema.model, saved["ema"], what=f"checkpoint {path} (EMA)")
        state.optimizer.load_state_dict(saved["optimizer"])
    state.precision.load_state_dict(saved["scaler"])
    step = int(saved["step"])
    if len(saved["rng"]) == dist.world_size:
        checkpoint.restore_rng(saved["rng"][dist.rank])
    else:  # another number of processes: the data order is kept, the noise streams cannot be
        if dist.is_main:
            print(f"note: {path} was written by {len(saved['rng'])} process(es), this run has "
                  f"{dist.world_size}; random streams are reseeded")
        seed_everything(rank_seed(state.cfg.seed, dist.rank) + step)
    return step, DataPosition.from_state(saved["data"])


class SampleGrids:
    """EMA sample grids as PNG (``folder/step-XXXXXXXX.png``): 4 per class for up to 10 classes,
    else 32 fixed random classes. Rank 0 samples with its own seeded generator, so the training RNG
    streams are untouched; a latent model's VAE is loaded on first use."""

    def __init__(self, folder: Path, objective, info: dict, cfg: TrainConfig, precision, dist):
        self.folder, self.objective, self.info, self.cfg = folder, objective, info, cfg
        self.precision, self.dist = precision, dist
        self._decode = None

    def write(self, step: int, ema_model) -> None:
        from gladiff.sample.generate import class_labels, generate
        from gladiff.sample.images import save_grid
        from gladiff.sample.load import make_decoder

        if not self.dist.is_main:
            return
        info, cfg, k = self.info, self.cfg, self.info["num_classes"]
        if self._decode is None:
            try:
                self._decode = make_decoder(info, self.dist.device) or (lambda x: x)
            except (ImportError, ValueError, OSError) as err:
                print(f"note: no sample grid ({err})")
                return
        labels = class_labels(4 * k, k, classes=range(k)) if k <= 10 else class_labels(32, k, seed=cfg.seed)
        shape = (info["in_channels"], info["sample_size"], info["sample_size"])
        _, images = generate(ema_model, self.objective, labels, shape, seed=cfg.seed, batch_size=len(labels),
                             sampler=cfg.sample_sampler, steps=cfg.sample_steps, cfg_scale=cfg.sample_cfg,
                             dist=parallel.Dist(device=self.dist.device), decode=self._decode,
                             autocast=self.precision.autocast, progress=False)
        save_grid(self.folder / f"step-{step:08d}.png", images, nrow=min(k, 10) if k <= 10 else 8,
                  scale=max(1, 64 // images.shape[1]))
