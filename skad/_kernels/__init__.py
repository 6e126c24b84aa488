"""Shared numeric kernels (plain functions, no estimator state)."""
