"""Small stand-ins for the pipelines' collaborators, so the training and sampling machinery is tested
on its own: a tiny conditional conv net, a tiny epsilon-prediction objective, a digits dataset, and an
objective without randomness (for comparing one process with several)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gladiff.data.digits import digits_arrays


class TinyDigits(torch.utils.data.Dataset):
    """The first ``n`` built-in digits as ``float32 [1, S, S]`` in [-1, 1] with int labels."""

    is_latent = False

    def __init__(self, n: int = 64, image_size: int = 8):
        images, labels = digits_arrays(image_size)
        self.x = torch.from_numpy(images[:n]).float()[:, None] / 127.5 - 1.0
        self.labels = labels[:n]
        self.num_classes, self.in_channels = 10, 1
        self.sample_size = self.image_size = image_size
        self.classes = [str(c) for c in range(10)]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i], int(self.labels[i])


class TinyNet(nn.Module):
    """``forward(x, t, y)``: conv -> + (time, label) embedding -> conv; ``null_label`` = num_classes."""

    def __init__(self, in_channels=1, num_classes=10, learn_sigma=False, width=8, **_):
        super().__init__()
        self.in_channels, self.num_classes, self.learn_sigma = in_channels, num_classes, learn_sigma
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.null_label = num_classes
        self.inp = nn.Conv2d(in_channels, width, 3, padding=1)
        self.emb = nn.Embedding(num_classes + 1, width)
        self.time = nn.Linear(1, width)
        self.out = nn.Conv2d(width, self.out_channels, 3, padding=1)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))  # a buffer EMA must copy

    def forward(self, x, t, y):
        self.calls += 1
        h = self.inp(x) + (self.emb(y) + self.time(t.float()[:, None] / 1000))[:, :, None, None]
        return self.out(F.silu(h))


def tiny_builder(spec: dict) -> nn.Module:
    """A ``model_builder`` for ``train``: ``TinyNet`` sized by the spec (``overrides`` may set width)."""
    return TinyNet(spec["in_channels"], spec["num_classes"], spec["learn_sigma"], **spec["overrides"])


class TinyEps:
    """Epsilon prediction on a cosine-ish schedule; t and noise come from torch's global RNG,
    exactly like the real objectives, so resume tests see the RNG state matter."""

    learn_sigma = False
    samplers = ("ddim",)
    default_sampler = "ddim"

    def _abar(self, t):
        return torch.cos(t.float() / 1000 * (torch.pi / 2)).clamp(min=1e-3) ** 2

    def training_loss(self, model, x0, y):
        t = torch.randint(0, 1000, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        a = self._abar(t)[:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return {"loss": F.mse_loss(model(xt, t, y).float(), noise)}

    @torch.no_grad()
    def sample(self, model, shape, y, sampler=None, steps=None, cfg_scale=1.0, seed=None, generator=None,
               progress=False, device=None, null_label=None):
        g = torch.Generator().manual_seed(seed) if seed is not None else generator
        x = torch.randn(shape, generator=g).to(device or "cpu")
        ts = torch.linspace(999, 0, (steps or 4) + 1)
        for t0, t1 in zip(ts[:-1], ts[1:]):
            t = torch.full((shape[0],), float(t0), device=x.device)
            eps = model(x, t, y)
            if cfg_scale != 1.0:
                eps_u = model(x, t, torch.full_like(y, model.null_label))
                eps = eps_u + cfg_scale * (eps - eps_u)
            a0, a1 = self._abar(t0), self._abar(t1)
            x0 = ((x - (1 - a0).sqrt() * eps) / a0.sqrt()).clamp(-1, 1)
            x = a1.sqrt() * x0 + (1 - a1).sqrt() * eps
        return x


class NoNoise:
    """A loss with no randomness at all (fixed t, target = the clean image): one process with a batch
    of 8 and two processes with 4 each must then produce the same gradients, up to summation order."""

    learn_sigma = False

    def training_loss(self, model, x0, y):
        t = torch.full((x0.shape[0],), 500.0, device=x0.device)
        return {"loss": F.mse_loss(model(0.5 * x0, t, y), x0)}


class NaNAfter:
    """``TinyEps`` whose loss turns NaN from the ``n``-th call on."""

    learn_sigma = False

    def __init__(self, n: int):
        self.n, self.calls, self.inner = n, 0, TinyEps()

    def training_loss(self, model, x0, y):
        self.calls += 1
        out = self.inner.training_loss(model, x0, y)
        if self.calls >= self.n:
            out["loss"] = out["loss"] * float("nan")
        return out


class CountingBackend:
    """A ``torch.compile`` backend for CPU tests: AOT autograd with the eager kernels (``aot_eager``:
    the forward/backward split of a real compile, no code generation), counting the graphs Dynamo
    hands it. Set it as ``gladiff.train.parallel.COMPILE_BACKEND`` / ``gladiff.sample.graphed.COMPILE_BACKEND``."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        from torch._dynamo.backends.registry import lookup_backend

        self.graphs += 1
        return lookup_backend("aot_eager")(gm, example_inputs)


def state_equal(a: dict, b: dict) -> bool:
    """Bitwise equality of two state dicts (same keys, same tensors)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def max_abs_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)

