"""Utilities shared by skad estimators (validation, image I/O, torch devices and seeds)."""

from ._torch import resolve_device, seed_from, torch_generator, torch_threads
from .validation import ImageSet, check_images, check_patches, labels_from_y, load_image, masks_from_y

__all__ = [
    "ImageSet",
    "check_images",
    "check_patches",
    "labels_from_y",
    "load_image",
    "masks_from_y",
    "resolve_device",
    "seed_from",
    "torch_generator",
    "torch_threads",
]
