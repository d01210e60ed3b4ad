"""What the built-in classifier checks (digits, glyphs) share: image batches in any layout, a fixed
CPU thread count for deterministic training, and reading a classifier's features and predictions."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F


def to_float_batch(images, image_size: int, what: str = "") -> torch.Tensor:
    """uint8 images -> float ``[N, C, image_size, image_size]`` in [0, 1], C as given (1 or 3).

    Accepts numpy arrays or tensors shaped ``[N, H, W]``, ``[N, H, W, 1|3]`` (NHWC) or
    ``[N, 1|3, H, W]``; other resolutions are resized (bilinear, antialiased when shrinking).
    ``what`` names the images in error messages ("digit", "glyph").
    """
    name = f"{what} images" if what else "images"
    x = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images.detach().cpu()
    if x.dtype != torch.uint8:
        raise ValueError(f"{name} must be uint8 in 0..255, got {x.dtype} (convert model outputs "
                         "in [-1, 1] with ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    elif not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise ValueError(f"{name} must be [N, H, W], [N, H, W, 1|3] or [N, 1|3, H, W], got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("no images given")
    x = x.float().div_(255)
    if tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=bool(x.shape[-1] > image_size or x.shape[-2] > image_size))
    return x


@contextmanager
def fixed_threads(n: int):
    """Run the block with ``n`` torch CPU threads: results of CPU kernels can depend on the thread
    count, so deterministic training runs on a fixed one."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def accuracy(preds: np.ndarray, labels, num_classes: int) -> float | None:
    """Share of ``preds`` equal to the requested ``labels`` (``[N]`` integers in ``0 .. num_classes - 1``,
    array or tensor); None without labels."""
    if labels is None:
        return None
    lab = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels).reshape(-1)
    if lab.shape[0] != len(preds):
        raise ValueError(f"got {len(preds)} images but {lab.shape[0]} labels")
    if not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0 or lab.max() >= num_classes:
        raise ValueError(f"labels must be integers in 0..{num_classes - 1}")
    return float((preds == lab).mean())


class ClassifierReader:
    """Features and predictions of a classifier ``self.net`` (with ``features(x)`` and ``head(f)``) on
    uint8 images, which ``self.to_batch(images)`` turns into its input; batches of ``BATCH``."""

    BATCH = 500

    @torch.no_grad()
    def _run(self, images) -> tuple[np.ndarray, np.ndarray]:
        x = self.to_batch(images)
        feats, preds = [], []
        for start in range(0, len(x), self.BATCH):
            f = self.net.features(x[start:start + self.BATCH])
            feats.append(f)
            preds.append(self.net.head(f).argmax(1))
        return torch.cat(feats).double().numpy(), torch.cat(preds).numpy()

    def features(self, images) -> np.ndarray:
        """``[N, F]`` float64 penultimate features of uint8 images."""
        return self._run(images)[0]

    def predict(self, images) -> np.ndarray:
        """``[N]`` int64 predicted classes of uint8 images."""
        return self._run(images)[1]
