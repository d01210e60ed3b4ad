"""Sampling pipeline: trained checkpoint -> class-conditional images (PNG grid, ADM ``.npz``)."""
from .auto import AutoExecution
from .generate import batch_seed, class_labels, generate
from .graphed import EXECUTION_CHOICES, EXECUTIONS, GraphedModel, PadBatch, for_sampling, resolve_execution
from .images import make_grid, read_npz, save_grid, save_images, to_uint8, write_npz
from .load import Trained, load_trained, make_decoder
from .pipeline import check_outputs, merge_shares, sample_images, write_outputs

__all__ = ["AutoExecution", "EXECUTION_CHOICES", "EXECUTIONS", "GraphedModel", "PadBatch", "for_sampling",
           "resolve_execution",
           "batch_seed", "class_labels", "generate", "make_grid", "read_npz", "save_grid", "save_images", "to_uint8",
           "write_npz", "Trained", "load_trained", "make_decoder", "check_outputs", "merge_shares",
           "sample_images", "write_outputs"]
