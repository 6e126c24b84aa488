"""Data sets: loaders for MVTec-AD-style folders and other real sets, and a generator.

Every loader returns a :class:`sklearn.utils.Bunch` (like scikit-learn's ``fetch_*``);
geometry (resize, centre crop) is applied to images and masks identically at load time,
masks with nearest neighbour so they stay binary {0, 1}.
"""

from ._crackforest import load_crackforest
from ._elpv import load_elpv
from ._folder import load_folder
from ._mvtec import load_mvtec
from ._split import one_class_train_test
from ._synthetic import DEFECT_TYPES, SYNTHETIC_KINDS, make_synthetic
from ._transforms import blind_setting, make_rto, rotate_crop

__all__ = [
    "DEFECT_TYPES",
    "SYNTHETIC_KINDS",
    "blind_setting",
    "load_crackforest",
    "load_elpv",
    "load_folder",
    "load_mvtec",
    "make_rto",
    "make_synthetic",
    "one_class_train_test",
    "rotate_crop",
]
