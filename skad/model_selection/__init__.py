"""Evaluation protocols for anomaly detection: one-class cross-validation splitters."""

from ._split import OneClassSplit

__all__ = ["OneClassSplit"]
