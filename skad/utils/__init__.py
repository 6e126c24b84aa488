"""Utilities shared by skad estimators (validation, image I/O, torch devices and seeds,
CPU threads)."""

from ._threads import available_cores, default_n_threads, passive_wait_active, thread_limits
from ._torch import resolve_device, seed_from, torch_generator
from .validation import ImageSet, check_images, check_patches, labels_from_y, load_image, masks_from_y

#: the earlier name of :func:`thread_limits`
torch_threads = thread_limits

__all__ = [
    "available_cores",
    "default_n_threads",
    "passive_wait_active",
    "thread_limits",
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
