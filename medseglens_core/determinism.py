"""Bitwise-reproducible training runs: fixed thread count, deterministic torch algorithms.

Model and SAE training run inside :func:`deterministic`. On the CPU, torch's reductions split
their work by thread, so the same seed gives different bits with 1 and 2 intra-op threads
(measured: a 20-step U-Net run differs); a fixed thread count (default
:data:`TRAIN_THREADS`) makes the weights depend only on the seed, the budget and the machine
kind (CPU instruction set, torch build), not on how many cores the machine has.
``torch.use_deterministic_algorithms`` (warn-only, so an op without a deterministic kernel
warns instead of failing) and cuDNN's deterministic mode cover the CUDA path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# One intra-op thread: bitwise identical on any core count, and on the 2-core development
# machine with other work running as fast as two (segformer: 45.8 s vs 45.8 s for 40 steps).
TRAIN_THREADS = 1


@contextmanager
def deterministic(threads: int | None = TRAIN_THREADS) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads and deterministic algorithms; restore after.

    ``threads=None`` keeps torch's current thread count (results then depend on it).
    """
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    prev_cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if threads:
        torch.set_num_threads(int(threads))
    if prev_cublas is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn
        if prev_cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
