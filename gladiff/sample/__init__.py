"""Sampling pipeline: trained checkpoint -> class-conditional images (PNG grid, ADM ``.npz``)."""
from .generate import batch_seed, class_labels, generate
from .graphed import EXECUTIONS, GraphedModel, for_sampling
from .images import make_grid, read_npz, save_grid, to_uint8, write_npz
from .load import Trained, load_trained, make_decoder
from .pipeline import check_outputs, merge_shares, sample_images, write_outputs

__all__ = ["EXECUTIONS", "GraphedModel", "for_sampling",
           "batch_seed", "class_labels", "generate", "make_grid", "read_npz", "save_grid", "to_uint8",
           "write_npz", "Trained", "load_trained", "make_decoder", "check_outputs", "merge_shares",
           "sample_images", "write_outputs"]
