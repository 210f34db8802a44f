"""The one switch between the readable NumPy kernels and the fast Numba kernels.

Every heavy op (convolution, pooling, batch normalisation) has two implementations
with the same signature: ``reference`` (plain NumPy, written to be read) and
``numba`` (compiled; on every core, see ``PARALLEL`` below). The Numba path is the default.

    tc.set_backend("numpy")          # for the rest of the program
    with tc.use_backend("numpy"):    # for one block
        ...

The environment variable ``TINYCNN_BACKEND`` sets the starting value.
"""
from __future__ import annotations

import contextlib
import functools
import os

import numba
import numpy as np

BACKENDS = ("numba", "numpy")

# Whether the Numba kernels run their ``prange`` loops (over images or rows) on all the
# cores. On by default; ``TINYCNN_NUMBA_PARALLEL=0`` (read at import) makes them serial.
# BLAS runs the matrix products on every core and Numba's threads everything else (the
# gathers, epilogues, pooling, normalisation, Winograd's transforms), one after the
# other, so each must leave the cores alone when idle. Numba's OpenMP threads sleep at
# once (``tinycnn/__init__.py`` sets ``OMP_WAIT_POLICY=PASSIVE``). OpenBLAS's spin for
# about 0.1 s after each product unless ``OPENBLAS_THREAD_TIMEOUT`` (read when NumPy
# loads OpenBLAS, so set before NumPy is imported) is lower, and that is a choice
# between throughput and latency, so the programs make it: ``train.py`` sets 16 (spin
# about 2**16 cycles), ``webcam.py`` keeps OpenBLAS' default, whose spinning threads
# answer the next small product at once. Measured on this project's 2-core machine
# (2026-11-25, training images/s at batch 128 / one-face ms), serial kernels with the
# default -> parallel kernels with 16: small3 1268 / 0.45 -> 1542 / 0.74, vggbn 186 /
# 2.21 -> 237 / 2.83, gap4 173 / 1.99 -> 250 / 2.33; parallel with the default spin:
# training as fast as serial, one face as quick. Small calls (one face) run on one
# thread (``threads_by_size``). Numba's on-disk cache does not tell parallel and serial
# apart: a process loads whichever was compiled first, so give each setting its own
# ``NUMBA_CACHE_DIR``.
PARALLEL = os.environ.get("TINYCNN_NUMBA_PARALLEL", "1") == "1"

# Below this many elements in its first array a fast kernel runs on one thread: waking
# the other threads costs more than they save (a one-face call: 0.45 ms for small3 on
# one thread, 0.94 ms on two).
SMALL_WORK = 1 << 17


def threads_by_size(fast):
    """Decorator for a fast kernel's Python entry: its compiled loops run on one thread
    when its first argument (an array) holds fewer than ``SMALL_WORK`` elements, on all
    of Numba's threads otherwise."""
    @functools.wraps(fast)
    def run(*args, **kwargs):
        # already one thread (webcam.py's default, or inside ``one_numba_thread``): the
        # context manager alone would cost a few microseconds on every small kernel
        if not PARALLEL or np.size(args[0]) >= SMALL_WORK or numba.get_num_threads() == 1:
            return fast(*args, **kwargs)
        with one_numba_thread():
            return fast(*args, **kwargs)
    return run


@contextlib.contextmanager
def one_numba_thread():
    """Run the block's Numba kernels on one thread (then restore the count): for a call
    whose kernels are all small, one switch instead of one around each kernel."""
    previous = numba.get_num_threads() if PARALLEL else 1
    if previous == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _after_fork_in_child():
    """GNU OpenMP is not fork-safe: Numba ends a forked child that starts a parallel
    kernel when its parent had already run one (its OpenMP threading layer, the one
    used here). Such a child switches to the NumPy kernels, slower but able to run,
    and says so once. Processes started with the ``spawn`` method, or with
    ``TINYCNN_NUMBA_PARALLEL=0``, keep the fast kernels."""
    global _current
    if not PARALLEL or _current != "numba":
        return
    try:
        layer = numba.threading_layer()
    except ValueError:   # no parallel kernel ran before the fork: nothing to fear
        return
    if layer == "omp":
        _current = "numpy"
        import warnings
        warnings.warn("tinycnn: this process was forked from one that ran Numba's OpenMP kernels, which "
                      "cannot run after a fork; using the NumPy kernels (slower). Start processes with "
                      "multiprocessing's 'spawn' method, or set TINYCNN_NUMBA_PARALLEL=0, to keep the "
                      "fast ones.", RuntimeWarning, stacklevel=1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _choice(value, choices, where):
    """``value`` if it is one of ``choices``, else a ValueError saying where it came from."""
    if value not in choices:
        raise ValueError(f"{where}: expected one of {choices}")
    return value


def _from_environment(variable, default, choices):
    value = os.environ.get(variable, default)
    return _choice(value, choices, f"{variable}={value!r}")


_current = _from_environment("TINYCNN_BACKEND", "numba", BACKENDS)


def get_backend() -> str:
    return _current


def set_backend(name: str) -> None:
    """Select the kernels used from now on: ``"numba"`` (fast) or ``"numpy"`` (reference)."""
    global _current
    _current = _choice(name, BACKENDS, f"set_backend({name!r})")


@contextlib.contextmanager
def _for_a_block(get, set_, name):
    """Apply ``set_(name)`` for the duration of a ``with`` block, then restore."""
    previous = get()
    set_(name)
    try:
        yield
    finally:
        set_(previous)


def use_backend(name: str):
    """Select the kernels for the duration of a ``with`` block."""
    return _for_a_block(get_backend, set_backend, name)


CONV_ALGORITHMS = ("auto", "im2col", "winograd")
_conv_algorithm = _from_environment("TINYCNN_CONV_ALGORITHM", "auto", CONV_ALGORITHMS)


def get_conv_algorithm() -> str:
    return _conv_algorithm


def set_conv_algorithm(name: str) -> None:
    """How 3x3 stride-1 convolutions are computed from now on.

    ``"im2col"``: gather + one matrix product (the direct sum, every shape);
    ``"winograd"``: Winograd F(4x4, 3x3) wherever it applies (3x3 kernel, stride 1);
    ``"auto"`` (the default): Winograd where it measured faster, im2col elsewhere
    (``tinycnn.kernels.conv.choose_algorithm``). Other shapes always use im2col.
    The environment variable ``TINYCNN_CONV_ALGORITHM`` sets the starting value.
    """
    global _conv_algorithm
    _conv_algorithm = _choice(name, CONV_ALGORITHMS, f"set_conv_algorithm({name!r})")


def use_conv_algorithm(name: str):
    """Select the convolution algorithm for the duration of a ``with`` block."""
    return _for_a_block(get_conv_algorithm, set_conv_algorithm, name)


def dispatch(reference, fast):
    """Return a function that calls ``reference`` or ``fast`` by the current backend."""
    def kernel(*args, **kwargs):
        return (fast if _current == "numba" else reference)(*args, **kwargs)
    kernel.__name__ = reference.__name__.replace("_reference", "")
    kernel.__doc__ = reference.__doc__
    kernel.reference, kernel.fast = reference, fast
    return kernel


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    A training step allocates and frees the same large activation arrays every time.
    glibc serves each allocation above 32 MiB with a fresh ``mmap`` and unmaps it on
    free, so every step pays a page fault (and the kernel's zeroing) for every page
    it touches (bench/README.md has the measurement). Raising the mmap and trim thresholds makes those arrays
    come from the heap, where freed pages are reused: the effect of the caching
    allocators that TensorFlow and PyTorch carry, in two calls. The price is that a
    process keeps its peak memory until it exits.

    It changes the whole process, so importing tinycnn does not do it: the programs
    (``train.py``, ``webcam.py``, the benchmark's tinycnn worker) call it at start, unless
    ``TINYCNN_KEEP_FREED_MEMORY=0``. Returns whether the setting took effect (False off
    glibc, e.g. on macOS or musl, and when the variable says no).
    """
    if os.environ.get("TINYCNN_KEEP_FREED_MEMORY", "1") == "0":
        return False
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))

