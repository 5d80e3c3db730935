"""Shared setup for the seg_models tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_and_single_threaded() -> Iterator[None]:
    # The CI box is small and shared: one thread keeps the suite predictable.
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
