"""The FID Inception-v3: the network of TensorFlow's 2015-12-05 Inception graph, in PyTorch.

This is the network the ADM evaluation suite (and so DiT's and DiG's tables) runs, restated so that
pytorch-fid's converted weights load into it unchanged: the file ``pt_inception-2015-12-05-6726825d.pth``
(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth,
about 91 MB; torch-fidelity ships the same conversion as ``weights-inception-2015-12-05-6726825d.pth``).
Module and parameter names follow torchvision's ``Inception3`` (which that file uses); the blocks
differ from torchvision's where the TF graph does: the average pools exclude padding, and the last
block pools with max instead of average.

Nothing is downloaded: the weights come from a local file given to ``load_inception`` or named by
the environment variable ``GLADIFF_INCEPTION``.

What the network returns for images in [0, 255] of any size (``InceptionV3.forward``):

- ``pool``: ``[N, 2048]`` the final average pool (TF ``pool_3``) -> FID, precision/recall;
- ``spatial``: ``[N, 2023]`` the first 7 channels of ``mixed_6/conv`` (Mixed_6d's 1x1 branch,
  17x17), flattened in TF's channels-last order -> sFID;
- ``logits``: ``[N, 1008]`` ``pool @ W`` without the bias (as ADM's evaluator) -> Inception Score.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ENV_VAR = "GLADIFF_INCEPTION"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
# torch.hub file names carry the first hex digits of the file's SHA-256.
WEIGHTS_SHA256_PREFIX = "6726825d"
INPUT_SIZE = 299
SPATIAL_CHANNELS = 7
POOL_DIM, SPATIAL_DIM, NUM_LOGITS = 2048, 17 * 17 * SPATIAL_CHANNELS, 1008

MISSING_WEIGHTS_HELP = (
    "FID/sFID/IS/precision/recall need the FID Inception-v3 weights, which gladiff never downloads. "
    f"Get pytorch-fid's port of the TF 2015-12-05 graph, {WEIGHTS_FILE} (about 91 MB), from\n  {WEIGHTS_URL}\n"
    f"and pass it with --inception PATH or set {ENV_VAR}=PATH. "
    "(The built-in digit check, `gladiff eval SAMPLES.npz` on digit samples, needs no weights.)"
)


class InceptionWeightsNotFound(FileNotFoundError):
    """No Inception weights file was given, or the given one does not exist."""


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------

class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as in the TF graph), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x):
    # TF's SAME average pool divides by the number of real (unpadded) pixels.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches (TF mixed .. mixed_2)."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction (TF mixed_3)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 branches (TF mixed_4 .. mixed_7)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward_with_1x1(self, x):
        """The block output ``[N, 768, 17, 17]`` and its 1x1 branch ``[N, 192, 17, 17]`` (TF ``conv``)."""
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([b1, b7, d, self.branch_pool(_avg_pool_3x3(x))], 1), b1

    def forward(self, x):
        return self.forward_with_1x1(x)[0]


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction (TF mixed_8)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 3x3 branches (TF mixed_9, mixed_10).

    ``pool="max"`` reproduces the TF graph's last block (mixed_10), which max-pools where the paper
    (and torchvision) average-pool.
    """

    def __init__(self, in_channels: int, pool: str = "avg"):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = (F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.pool == "max"
                  else _avg_pool_3x3(x))
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


# ---------------------------------------------------------------------------------------------
# Input pipeline of the TF graph
# ---------------------------------------------------------------------------------------------

def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1.x ``ResizeBilinear`` (align_corners=False, no half-pixel centres).

    The Inception graph resizes its input this way; it samples source pixel ``dst * in / out``
    (not ``(dst + 0.5) * in / out - 0.5`` as ``F.interpolate`` does), so the two differ.

    Args:
        x: ``[N, C, H, W]`` float tensor.
        size: ``(out_h, out_w)``.

    Returns:
        ``[N, C, out_h, out_w]`` tensor of ``x``'s dtype.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float [N, C, H, W] tensor, got {x.dtype} {tuple(x.shape)}")
    (h, w), (oh, ow) = x.shape[-2:], size

    def taps(n_in, n_out):
        # float32 arithmetic as in TF's kernel: scale = in / out, src = dst * scale.
        scale = torch.tensor(float(n_in), dtype=torch.float32) / n_out
        src = torch.arange(n_out, dtype=torch.float32, device=x.device) * scale.to(x.device)
        lo = src.floor().long().clamp_max(n_in - 1)
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, (src - lo.float()).to(x.dtype)

    y0, y1, fy = taps(h, oh)
    x0, x1, fx = taps(w, ow)
    top, bottom = x.index_select(2, y0), x.index_select(2, y1)
    tl, tr = top.index_select(3, x0), top.index_select(3, x1)
    bl, br = bottom.index_select(3, x0), bottom.index_select(3, x1)
    fx = fx.view(1, 1, 1, ow)
    upper = tl + (tr - tl) * fx
    lower = bl + (br - bl) * fx
    return upper + (lower - upper) * fy.view(1, 1, oh, 1)


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------

class InceptionV3(nn.Module):
    """The FID Inception-v3 (TF 2015-12-05 graph); ``forward`` returns pool, spatial and logits features."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, NUM_LOGITS)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of ``images``: float ``[N, 3, H, W]`` with values in [0, 255] (any H, W).

        Returns:
            ``{"pool": [N, 2048], "spatial": [N, 2023], "logits": [N, 1008]}``.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
        x = resize_bilinear_tf1(images.float(), (INPUT_SIZE, INPUT_SIZE))
        x = (x - 128.0) / 128.0  # the graph's Sub(128) and Mul(1/128)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))
        x, conv = self.Mixed_6d.forward_with_1x1(x)  # conv: TF "mixed_6/conv"
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(self.Mixed_6e(x))))
        pool = x.mean(dim=(2, 3))  # TF "pool_3": 8x8 average
        # TF tensors are channels-last: take 7 channels, then flatten (h, w, c).
        spatial = conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        logits = pool @ self.fc.weight.T  # ADM's softmax graph multiplies by W only, no bias
        return {"pool": pool, "spatial": spatial, "logits": logits}


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def resolve_weights_path(path: str | os.PathLike | None = None) -> Path:
    """The weights file: ``path`` if given, else ``$GLADIFF_INCEPTION``; raises with instructions if neither exists."""
    chosen = path if path is not None else os.environ.get(ENV_VAR) or None
    if chosen is None:
        raise InceptionWeightsNotFound(f"no Inception weights given. {MISSING_WEIGHTS_HELP}")
    chosen = Path(chosen).expanduser()
    if not chosen.is_file():
        raise InceptionWeightsNotFound(f"Inception weights file {str(chosen)!r} does not exist. "
                                       f"{MISSING_WEIGHTS_HELP}")
    return chosen


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB pieces)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def _is_counter(key: str) -> bool:
    # BatchNorm's step counter is not a weight; older converted files do not carry it.
    return key.endswith("num_batches_tracked")


def load_state_dict_checked(net: InceptionV3, state_dict: dict) -> None:
    """Load ``state_dict`` into ``net`` after checking every name and shape; ValueError names the mismatch."""
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise ValueError("the Inception weights file must hold a state dict (names -> tensors)")
    expected = {k: v.shape for k, v in net.state_dict().items() if not _is_counter(k)}
    given = {k: v for k, v in state_dict.items() if not _is_counter(k)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        raise ValueError(f"Inception weights do not match the FID Inception-v3: {len(missing)} missing "
                         f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
                         f"expected {WEIGHTS_FILE}")
    wrong = [f"{k}: {tuple(given[k].shape)} != {tuple(s)}" for k, s in expected.items()
             if tuple(given[k].shape) != tuple(s)]
    if wrong:
        raise ValueError(f"Inception weights have wrong shapes: {wrong[:3]}")
    net.load_state_dict(given, strict=False)


def load_inception(path: str | os.PathLike | None = None, device=None,
                   check_hash: bool = True) -> InceptionV3:
    """The FID Inception-v3 with weights from a local file, in eval mode, on ``device``.

    Args:
        path: the weights file (``pt_inception-2015-12-05-6726825d.pth``); default ``$GLADIFF_INCEPTION``.
        device: target device (default: CUDA when available, else CPU).
        check_hash: warn when the file's SHA-256 does not start with the published ``6726825d``.

    Raises:
        InceptionWeightsNotFound: no file given / the file is missing (the message says where to get it).
        ValueError: the file cannot be read as PyTorch weights, or is not a state dict of this network.
    """
    weights = resolve_weights_path(path)
    net = InceptionV3()
    try:
        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # not a zip/pickle, or a pickle of other objects: not the weights either way
        # torch's own text suggests weights_only=False, which would run code from the file: not shown.
        raise ValueError(f"Inception weights file {str(weights)!r} is not a PyTorch state dict "
                         f"({type(err).__name__}); expected {WEIGHTS_FILE} from {WEIGHTS_URL}") from err
    load_state_dict_checked(net, state_dict)
    if check_hash and not file_sha256(weights).startswith(WEIGHTS_SHA256_PREFIX):
        warnings.warn(f"{weights} is not the published {WEIGHTS_FILE} (SHA-256 does not start with "
                      f"{WEIGHTS_SHA256_PREFIX}); scores may not be comparable to published ones",
                      stacklevel=2)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return net.to(device).eval().requires_grad_(False)


def images_to_nchw(batch) -> torch.Tensor:
    """uint8 / float images ``[N, H, W]``, ``[N, H, W, 1|3]`` (NHWC, values 0..255) -> float ``[N, 3, H, W]``."""
    array = np.asarray(batch)
    # Batches streamed from an archive are read-only views; torch wants writable memory.
    x = torch.from_numpy(array if array.flags.writeable else array.copy())
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W], [N, H, W, 1] or [N, H, W, 3], got {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def extract_features(net: nn.Module, images, batch_size: int = 64, device=None,
                     progress: bool = True, desc: str = "Inception features") -> dict[str, np.ndarray]:
    """Run ``net`` over ``images`` in batches.

    Args:
        net: an ``InceptionV3`` (or any module mapping float ``[B, 3, H, W]`` in 0..255 to a dict of
            ``[B, D]`` tensors).
        images: uint8 array ``[N, H, W(, C)]`` (NHWC), or a sequence of such batches.
        batch_size: images per forward pass (ignored for a sequence of batches).
        device: where to run (default: the net's device).
        progress: show a tqdm bar.

    Returns:
        dict name -> float32 array ``[N, D]`` (``pool``, ``spatial``, ``logits`` for ``InceptionV3``).
    """
    from tqdm.auto import tqdm

    if device is None:
        device = next(net.parameters()).device
    if isinstance(images, np.ndarray) or torch.is_tensor(images):
        batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    else:
        batches = images
    out: dict[str, list[np.ndarray]] = {}
    # Full-precision convolutions: TF32 would move the features by ~1e-3 relative.
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for batch in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
            feats = net(images_to_nchw(batch).to(device))
            for name, value in feats.items():
                out.setdefault(name, []).append(value.float().cpu().numpy())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    if not out:
        raise ValueError("no images to extract features from")
    return {name: np.concatenate(parts) for name, parts in out.items()}
