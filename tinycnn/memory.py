"""A caching pool for the large arrays a training step allocates, as PyTorch's caching
allocator does for its tensors.

A training step allocates the same large arrays every time (activations, their
gradients, pooling's winners) and frees them by the end of the step. glibc serves each
allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it
when freed, and gives the top of its heap back to the system above a trim threshold, so
every step pays a page fault and the kernel's zeroing for every 4 KiB page of those
arrays. The fast kernels take their large outputs from here instead. A pool buffer is a
1-D byte array; what a kernel gets is a view of it, and every view of a view still
points at the buffer (``base``), so the buffer is free again exactly when nothing but
the pool refers to it, which its reference count tells. Nothing to release by hand,
nothing changed in the process: other code keeps NumPy's own allocator. The gain is
measured in bench/README.md ("Threads and memory").

Arrays below ``MIN_BYTES`` come from NumPy directly. The pool keeps at most
``KEEP_FREE_BYTES`` of buffers that are not in use; ``empty_cache()`` lets them all go.
"""
from __future__ import annotations

import math
import sys
import threading

import numpy as np

MIN_BYTES = 1 << 18            # 256 KiB: below it glibc's heap serves an array without a page fault
KEEP_FREE_BYTES = 1 << 31     # free buffers kept for reuse, at most (least recently used go first)
_buffers: list[np.ndarray] = []   # least recently handed out first
_lock = threading.Lock()          # tinycnn's own threads may allocate at once


def _is_free(i) -> bool:
    """Whether nothing but the pool refers to buffer ``i``: its reference count is then 2,
    the pool's list and getrefcount's own argument (so no local name may hold it here)."""
    return sys.getrefcount(_buffers[i]) == 2


def empty(shape, dtype=np.float32) -> np.ndarray:
    """Like ``np.empty(shape, dtype)`` (C order, uninitialised), from the pool when large."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    with _lock:
        best = None
        for i in range(len(_buffers)):
            # the smallest free buffer that fits without wasting more than a fifth of itself
            size = _buffers[i].nbytes
            if nbytes <= size <= nbytes * 5 // 4 and (best is None or size < _buffers[best].nbytes) and _is_free(i):
                best = i
        if best is None:
            _trim(keep=KEEP_FREE_BYTES)
            _buffers.append(np.empty(nbytes, np.uint8))
        else:
            _buffers.append(_buffers.pop(best))   # now the most recently used
        return _buffers[-1][:nbytes].view(dtype).reshape(shape)


def empty_like(a) -> np.ndarray:
    """``empty(a.shape, a.dtype)``."""
    return empty(a.shape, a.dtype)


def zeros(shape, dtype=np.float32) -> np.ndarray:
    """Like ``np.zeros``, from the pool when large."""
    out = empty(shape, dtype)
    out.fill(0)
    return out


def _trim(keep: int):
    """Let the least recently used free buffers go until at most ``keep`` bytes are free."""
    free = [i for i in range(len(_buffers)) if _is_free(i)]     # oldest first
    total = sum(_buffers[i].nbytes for i in free)
    gone = set()
    for i in free:
        if total <= keep:
            break
        total -= _buffers[i].nbytes
        gone.add(i)
    _buffers[:] = [_buffers[i] for i in range(len(_buffers)) if i not in gone]


def empty_cache() -> None:
    """Release every pool buffer that nothing uses (as ``torch.cuda.empty_cache``)."""
    with _lock:
        _trim(keep=0)


def cached_bytes() -> tuple[int, int]:
    """(bytes held by the pool, bytes of them in use)."""
    with _lock:
        return (sum(b.nbytes for b in _buffers),
                sum(_buffers[i].nbytes for i in range(len(_buffers)) if not _is_free(i)))
