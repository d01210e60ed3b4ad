"""The DiT-style skeleton DiG and DiT share: patchify, positions, conditioning, blocks, final layer.

A subclass only says how to build its blocks; everything a user calls (``forward``,
``forward_with_cfg``, input checks) lives here so the two families behave identically.
"""
from __future__ import annotations

import numbers

import torch
import torch.nn as nn

from .layers import FinalLayer, LabelEmbedder, TimestepEmbedder, as_pair, sincos_pos_embed_2d


class DiffusionTransformer(nn.Module):
    """Latent/pixel diffusion transformer: ``forward(x, t, y) -> [B, C_out, H, W]``.

    Args:
        input_size: spatial size the model is built for, int or ``(h, w)``; other sizes divisible
            by ``patch_size`` also run (positions are recomputed for them).
        patch_size: ``p``; tokens are ``p x p`` patches in raster order.
        in_channels: ``C`` of ``x``; ``out_channels`` is ``2C`` when ``learn_sigma`` else ``C``.
        num_classes: label classes; with ``class_dropout_prob > 0`` label ``num_classes`` is the null class.
    """

    family = "base"

    def __init__(self, input_size=32, patch_size: int = 2, in_channels: int = 4, hidden_size: int = 1152,
                 depth: int = 28, num_heads: int = 16, class_dropout_prob: float = 0.1,
                 num_classes: int = 1000, learn_sigma: bool = True):
        super().__init__()
        for name, value in (("patch_size", patch_size), ("in_channels", in_channels),
                            ("hidden_size", hidden_size), ("depth", depth), ("num_heads", num_heads),
                            ("num_classes", num_classes)):
            _check_positive_int(name, value)
        if isinstance(input_size, (list, tuple)) and len(input_size) == 2:
            for value in input_size:
                _check_positive_int("input_size", value)
        else:
            _check_positive_int("input_size", input_size)
        if isinstance(class_dropout_prob, bool) or not 0.0 <= class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob is the probability of dropping a label, in [0, 1); "
                             f"got {class_dropout_prob!r}")
        self.input_size = as_pair(input_size)
        if self.input_size[0] % patch_size or self.input_size[1] % patch_size:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch_size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.learn_sigma = learn_sigma
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.validate_inputs = True  # value checks on labels (a host sync on GPU); off for graphs

        self.grid = (self.input_size[0] // patch_size, self.input_size[1] // patch_size)
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        # Fixed sin-cos positions, a frozen parameter as in DiT (so it is in the state_dict).
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], hidden_size),
                                      requires_grad=False)
        self.blocks = nn.ModuleList(self.build_blocks())
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    # -- to be provided by a family
    def build_blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def initialize_family_weights(self) -> None:
        """Family-specific init, run after the DiT recipe."""

    # -- DiT initialisation recipe
    def initialize_weights(self) -> None:
        def basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic_init)
        pos = torch.from_numpy(sincos_pos_embed_2d(self.hidden_size, self.grid).copy()).float()
        self.pos_embed.data.copy_(pos.unsqueeze(0))
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        self.initialize_family_weights()

    # -- what it is
    def config(self) -> dict:
        """Every constructor option that shapes the network, as plain data: ``type(self)(**config())``
        (or ``create_model(self.name, **config())``) builds the same function, so these are what
        ``save_pretrained`` records. Execution choices (kernel backends) are not among them: the
        machine that loads a model picks its own."""
        h, w = self.input_size
        return {"input_size": h if h == w else [h, w], "patch_size": self.patch_size,
                "in_channels": self.in_channels, "hidden_size": self.hidden_size, "depth": self.depth,
                "num_heads": self.num_heads, "class_dropout_prob": float(self.y_embedder.dropout_prob),
                "num_classes": self.num_classes, "learn_sigma": bool(self.learn_sigma)}

    def save_pretrained(self, folder, *, objective=None, data: dict | None = None, card: str | None = None):
        """Write this model as a shareable folder: ``model.safetensors`` (the weights as they are now),
        ``config.json`` (``config()``, the zoo name, and ``objective``: an objective or its name, the
        training ``data`` facts) and a ``README.md`` model card (``card``, or one generated from
        the config). ``gladiff.from_pretrained(folder)`` reads it back. The folder format and its
        checks live in ``gladiff.hub`` (docs/sharing.md); returns the folder's path."""
        from gladiff.hub import save_pretrained  # the format is a layer above the models

        return save_pretrained(self, folder, objective=objective, data=data, card=card)

    # -- helpers
    @property
    def null_label(self) -> int | None:
        """Label of the null class used for classifier-free guidance, or None without one."""
        return self.num_classes if self.y_embedder.dropout_prob > 0 else None

    def pos_embed_for(self, grid: tuple[int, int], ref: torch.Tensor) -> torch.Tensor:
        if grid == self.grid:
            return self.pos_embed
        pos = torch.from_numpy(sincos_pos_embed_2d(self.hidden_size, grid).copy())
        return pos.to(device=ref.device, dtype=self.pos_embed.dtype).unsqueeze(0)

    def unpatchify(self, x, grid: tuple[int, int]):
        """``[B, h*w, p*p*C]`` -> ``[B, C, h*p, w*p]``."""
        h, w = grid
        p, c = self.patch_size, self.out_channels
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def check_inputs(self, x, t, y):
        if x.ndim != 4:
            raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
        B, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"x has {C} channels but the model takes in_channels={self.in_channels}")
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"x spatial size {(H, W)} is not divisible by patch_size {self.patch_size}")
        if t.ndim != 1 or t.shape[0] != B:
            raise ValueError(f"t must be [B]=[{B}], got shape {tuple(t.shape)}")
        if y.ndim != 1 or y.shape[0] != B:
            raise ValueError(f"y must be [B]=[{B}], got shape {tuple(y.shape)}")
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
        if self.validate_inputs and not y.is_meta and not _tracing() and y.numel():
            top = self.num_classes if self.null_label is not None else self.num_classes - 1
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi > top:
                raise ValueError(f"labels must be in [0, {top}] (num_classes={self.num_classes}"
                                 f"{', last is the null class' if self.null_label is not None else ''}); "
                                 f"got values in [{lo}, {hi}]")

    # -- the network
    def forward(self, x, t, y):
        """``x: [B, C, H, W]``, ``t: [B]`` timesteps (float ok), ``y: [B]`` labels -> ``[B, C_out, H, W]``."""
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        self.check_inputs(x, t, y)
        grid = (x.shape[2] // self.patch_size, x.shape[3] // self.patch_size)
        x = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed_for(grid, x)
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c, grid)
        return self.unpatchify(self.final_layer(x, c), grid)

    def forward_with_cfg(self, x, t, y, cfg_scale: float):
        """Classifier-free guidance in one batched pass (DiT's convention: the batch is
        ``[cond half; null half]`` with the same ``x`` in both halves).

        Guidance is applied to all ``in_channels`` of the prediction (DiT's reference code guided
        only the first three); learned-variance channels are taken from the conditional pass.
        """
        if x.shape[0] % 2:
            raise ValueError(f"forward_with_cfg needs an even batch [cond; null], got {x.shape[0]}")
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half], dim=0), t, y)
        eps, rest = out[:, : self.in_channels], out[:, self.in_channels:]
        cond, uncond = eps.chunk(2, dim=0)
        guided = uncond + cfg_scale * (cond - uncond)
        eps = torch.cat([guided, guided], dim=0)
        rest_cond = rest[: len(rest) // 2]
        return torch.cat([eps, torch.cat([rest_cond, rest_cond], dim=0)], dim=1)


def _check_positive_int(name: str, value) -> None:
    """``ValueError`` unless ``value`` is an integer >= 1 (a bool or a float such as 2.0 is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _tracing() -> bool:
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
