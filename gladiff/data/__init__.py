"""Data pipelines: the built-in digits and glyphs, ImageNet-style folders, and pre-extracted VAE latents.

``build_dataset(spec, image_size)`` is the entry point; see ``docs/data.md``. The VAE helpers live in
``gladiff.data.vae`` (imported on use, since diffusers is optional).
"""
from gladiff.data.base import ClassDataset
from gladiff.data.digits import DigitsDataset, digits_arrays, digits_split
from gladiff.data.glyphs import GlyphsDataset, glyphs_arrays
from gladiff.data.imagefolder import ImageFolderDataset, UnreadableImageWarning, scan_image_folder
from gladiff.data.latents import LatentDataset, read_manifest, save_latents
from gladiff.data.spec import DataSpec, build_dataset, parse_data_spec
from gladiff.data.transforms import center_crop_arr

__all__ = [
    "ClassDataset", "DataSpec", "DigitsDataset", "GlyphsDataset", "ImageFolderDataset", "LatentDataset",
    "UnreadableImageWarning", "build_dataset", "center_crop_arr", "digits_arrays", "digits_split", "glyphs_arrays",
    "parse_data_spec", "read_manifest", "save_latents", "scan_image_folder",
]
