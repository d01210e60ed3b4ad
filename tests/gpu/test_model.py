"""A tiny DiG (all four SREM orders, 48 tokens on an 8 x 6 grid: two GLA chunks) on the GPU: the
default execution (``gla_backend="auto"``: our Triton kernels) against the exact recurrence; training
steps and sampling passes under torch.compile with Inductor, CUDA-graph replays and both, against
eager; 50 steps of bf16 autocast training without a NaN."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from gladiff import create_model
from gladiff.bench.common import capture_graph
from gladiff.diffusion import create_objective
from gladiff.models import compile_model
from gladiff.sample import for_sampling
from gladiff.train import TrainConfig, train

pytestmark = pytest.mark.gpu

SIZE = (16, 12)  # pixels; 8 x 6 patches of 2
TINY = dict(input_size=SIZE, in_channels=4, num_classes=10, depth=4, hidden_size=128, num_heads=2,
            class_dropout_prob=0.1)  # dk 32, dv 64 as in every released DiG


def tiny_dig(**kw):
    """Random weights (adaLN-Zero's zeros would hide the token mixer), on the GPU, eval mode (no
    label dropout: every run sees the same labels)."""
    torch.manual_seed(0)
    model = create_model("DiG-S/2", **{**TINY, **kw})
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    return model.cuda().eval()


def batch(n=4, seed=1):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n, 4, *SIZE, device="cuda", generator=gen)
    t = torch.rand(n, device="cuda", generator=gen) * 999
    y = torch.arange(n, device="cuda") % 11  # 10 is the null class
    return x, t, y, torch.randn(n, 8, *SIZE, device="cuda", generator=gen)


def rel(a, b):
    return (torch.linalg.vector_norm(a.double() - b.double()) / torch.linalg.vector_norm(b.double())).item()


def forward_backward(model, autocast=False):
    x, t, y, target = batch()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = model(x, t, y)
    F.mse_loss(out.float(), target).backward()
    return [out.detach().float()] + [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_default_execution_equals_the_recurrence(autocast):
    """``gla_backend="auto"`` (Triton on CUDA) vs ``"recurrent"``: output and every parameter
    gradient. In float32; and under bf16 autocast, where the kernels take bf16 q/k/v and the
    recurrence (accumulating in float32) sees the same bf16 projections, so the two differ only in
    the mixer's own precision."""
    from gladiff.ops.gla import resolve_backend

    assert resolve_backend("auto", "cuda", torch.bfloat16 if autocast else torch.float32) == "triton"
    model = tiny_dig()
    got = forward_backward(model, autocast)
    model.set_gla_backend("recurrent")
    ref = forward_backward(model, autocast)
    names = ["out"] + [n for n, p in model.named_parameters() if p.requires_grad]
    assert ref[names.index("blocks.2.attn.k_proj.weight")].abs().max() > 0  # the mixer is in the graph
    # float32: every tensor (a gradient crosses four blocks: 1e-4 measured with the chunked form on a
    # CPU). bf16: the output, and all gradients together: single small ones (a norm weight's, the patch
    # embedding's) sum products that cancel, and moved by 0.1-0.4 on a CPU with the mixer exact.
    tol = 5e-2 if autocast else 1e-3
    for name, a, r in zip(names, got, ref):
        assert torch.isfinite(a).all(), name
        if name == "out" or not autocast:
            assert rel(a, r) < tol, f"{name}: relative error {rel(a, r):.2e}"
    everything = rel(torch.cat([g.flatten() for g in got[1:]]), torch.cat([g.flatten() for g in ref[1:]]))
    assert everything < tol, f"all gradients: relative error {everything:.2e}"


# ----------------------------------------------------------------------------- training steps
class Stepper:
    """One training step as ``gladiff bench`` times it: forward, MSE loss, backward, AdamW (capturable,
    so that a CUDA graph can hold the step); the loss lands in a fixed buffer."""

    def __init__(self, model, net):
        self.model, self.net = model, net
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, capturable=True)
        self.x, self.t, self.y, self.target = batch()
        self.loss = torch.zeros((), device="cuda")

    def __call__(self):
        self.opt.zero_grad(set_to_none=True)
        out = self.net(self.x, self.t, self.y)
        loss = F.mse_loss(out, self.target)
        loss.backward()
        self.opt.step()
        self.loss.copy_(loss.detach())


def run_steps(execution: str, steps: int = 4):
    """``(losses, weights)`` after ``steps`` training steps under ``execution``."""
    model = tiny_dig()
    net = compile_model(model, "model", backend="inductor") if "compile" in execution else model
    step = Stepper(model, net)
    losses = []
    if "graph" in execution:
        # The first step runs on a side stream before the capture (compiles, allocates the optimizer
        # state); the captured step is then replayed for the others.
        graph = capture_graph(step, warmup=1)
        torch.cuda.synchronize()
        losses.append(step.loss.item())
        for _ in range(steps - 1):
            graph.replay()
            losses.append(step.loss.item())
    else:
        for _ in range(steps):
            step()
            losses.append(step.loss.item())
    return losses, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def eager_steps():
    return run_steps("eager")


@pytest.mark.parametrize("execution", ["compile", "graph", "compile+graph"])
def test_training_steps_equal_eager(execution, eager_steps):
    """Inductor (not a test backend) and CUDA-graph replays of whole training steps give eager's
    losses step by step and eager's weights after 4 steps (float32). Adam's first steps turn a
    rounding of a near-zero gradient into a full step of either sign, so the weights are compared by
    how far they moved: 1.7e-3 apart for Inductor on a CPU, while a query projection left untrained
    would be 7% of the movement here (Adam moves every element by about the learning rate)."""
    torch._dynamo.reset()
    losses, weights = run_steps(execution)
    ref_losses, ref_weights = eager_steps
    assert len(set(ref_losses)) == len(ref_losses)  # the steps did change the model
    for a, b in zip(losses, ref_losses):
        assert a == pytest.approx(b, rel=1e-4), (losses, ref_losses)
    init = {n: p.detach() for n, p in tiny_dig().named_parameters() if p.requires_grad}
    moved = {n: ref_weights[n] - init[n] for n in init}
    total = sum(m.square().sum() for m in moved.values()).sqrt()
    diff = sum((weights[n] - ref_weights[n]).square().sum() for n in init).sqrt()
    assert total > 0 and diff / total < 1e-2, (diff / total).item()


# ----------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("execution", ["compile", "graph", "compile+graph"])
def test_sampling_equals_eager(execution):
    """``for_sampling`` executions: single passes on new inputs (a replayed graph must read them) and a
    whole guided DDIM run, against the eager model."""
    torch._dynamo.reset()
    model = tiny_dig()
    fast = for_sampling(model, execution, "cuda", "model")
    with torch.no_grad():
        for seed in (1, 2):  # batch 8: the shape of the guided passes below, so nothing recompiles
            x, t, y, _ = batch(8, seed=seed)
            ref = model(x, t, y)
            assert rel(fast(x, t, y), ref) < 1e-4
        ddpm = create_objective("ddpm")
        labels = torch.arange(4, device="cuda")
        kw = dict(sampler="ddim", steps=8, cfg_scale=2.0, seed=3, device="cuda")
        ref = ddpm.sample(model, (4, 4, *SIZE), labels, **kw)
        got = ddpm.sample(fast, (4, 4, *SIZE), labels, **kw)
    assert torch.isfinite(got).all() and rel(got, ref) < 1e-3


# ----------------------------------------------------------------------------- bf16 training
def test_bf16_autocast_training_runs_50_steps_without_nan(tmp_path):
    """The training loop on CUDA with bf16 autocast, the default GLA backend (Triton) and the DDPM
    objective on the built-in digits: 50 finite losses and gradient norms, finite weights."""
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), data="digits", image_size=16, model="DiG-S/2",
                      model_opts=dict(depth=4, hidden_size=128, num_heads=2), objective="ddpm", steps=50,
                      global_batch_size=32, lr=1e-3, precision="bf16", device="cuda", log_every=1,
                      ckpt_every=0, tensorboard=False, seed=0)
    result = train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 50
    for key in ("loss", "grad_norm"):
        values = torch.tensor([r[key] for r in rows])
        assert torch.isfinite(values).all(), (key, values)
    from gladiff.train import checkpoint as ckpt

    state = ckpt.read_checkpoint(result.checkpoint)
    assert state["step"] == 50 and all(torch.isfinite(v).all() for v in state["model"].values())
