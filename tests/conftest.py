"""Shared pytest setup.

Tests run on one CPU device in-process. Multi-device checks start a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (see tests/helpers.py), because the device count
must be fixed before JAX initialises its backend. Rank promotion raises, so a silent broadcast of
mismatched shapes is a test failure (STYLE.md §10). Use `with jax.enable_x64(True):` for float64 checks.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
