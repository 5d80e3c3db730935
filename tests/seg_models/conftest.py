"""Shared helpers for the seg_models tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_and_single_threaded() -> None:
    # The CI box is small and shared: one thread keeps the suite predictable.
    torch.manual_seed(0)
    torch.set_num_threads(1)
