"""Utilities shared by skad estimators (validation, image I/O)."""

from .validation import ImageSet, check_images, check_patches, labels_from_y, load_image, masks_from_y

__all__ = ["ImageSet", "check_images", "check_patches", "labels_from_y", "load_image", "masks_from_y"]
