"""One torch intra-op thread for the latent summary: many small steps after the network.

The summary of a case is some fifty products, resamplings and elementwise passes of a few
milliseconds or less. With two intra-op threads each one is a parallel region that waits for
both threads; on a machine whose cores other work is using, that wait is a scheduler time slice,
longer than the work (measured on the 2-core development machine under load: a 4000 x 64 x 256
product 13 ms with two threads, 2.3 ms with one (medians); the U-Net zoo case's voxel statistics
92 ms vs 21 ms). What a second thread could speed up is small: the encoder product of a case's
brain tokens takes 0.75 ms with two threads and 1.4 ms with one (best of 50).

``torch.set_num_threads`` is not confined to the calling thread (MKL's count is process-wide),
so sections share one saved count: each sets one thread on entry and, on exit, the count that
held before the first of any overlapping sections began, so that no thread keeps one thread
afterwards. With the service's ``inference_concurrency`` above 1, overlapping work can meanwhile
run with the other count: that changes its speed, and at most the float summation order of a
network pass running beside a summary, never which work is done.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_lock = threading.Lock()
_users = 0
_saved = 1


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread; then the count from before any concurrent section."""
    global _users, _saved
    with _lock:
        if _users == 0:
            _saved = torch.get_num_threads()
        _users += 1
        torch.set_num_threads(1)
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            torch.set_num_threads(_saved)
