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
import threading

import numba
import numpy as np

from . import memory

BACKENDS = ("numba", "numpy")

# Whether the Numba kernels run their ``prange`` loops (over images or rows) on all the
# cores. On by default; ``TINYCNN_NUMBA_PARALLEL=0`` (read at import) makes them serial.
# Numba's threads run the gathers, epilogues, pooling, normalisation and Winograd's
# transforms, and tinycnn's own threads the matrix products (``matmul`` below), one after
# the other, so each must leave the cores alone when idle: Numba's OpenMP threads sleep
# at once (``tinycnn/__init__.py`` sets ``OMP_WAIT_POLICY=PASSIVE``), and the products
# never wake OpenBLAS's threads, which would spin after each. Small calls (one face) run
# their Numba kernels on one thread (``threads_by_size``). Numba's on-disk cache does not
# tell parallel and serial apart: a process loads whichever was compiled first, so give
# each setting its own ``NUMBA_CACHE_DIR``.
PARALLEL = os.environ.get("TINYCNN_NUMBA_PARALLEL", "1") == "1"

# Below this many elements in its first array a fast kernel runs on one thread: waking
# the other threads costs more than they save (measured on one face: bench/README.md,
# "Measurements behind the kernels' choices").
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
    global _cores_outside
    previous = numba.get_num_threads() if PARALLEL else 1
    if previous == 1:
        yield
        return
    numba.set_num_threads(1)
    _cores_outside = previous   # still the cores a large product may be split between
    try:
        yield
    finally:
        _cores_outside = None
        numba.set_num_threads(previous)


# -- tinycnn's own threads, and BLAS on one thread inside them -------------------------------
# OpenBLAS's threads spin for about 0.1 s after every product they share (unless
# ``OPENBLAS_THREAD_TIMEOUT``, read only when NumPy loads, says otherwise), and while
# they spin they take the cores from Numba's threads, whose kernels come right after
# each product. So tinycnn never hands a product to OpenBLAS's threads: every product
# runs on one BLAS thread, and a large one is split between tinycnn's own threads (this
# one and a pool of ``numba.get_num_threads() - 1``), which sleep when idle. A user's
# own products outside tinycnn keep OpenBLAS's setting. bench/README.md has the figures.
# Below twice this many multiply-adds (about 0.15 ms on one core) a product stays in the
# calling thread: handing half of it to a pool thread and back costs some 15-20 us, and
# the halves of a small product run less well than the whole (bench/README.md).
SPLIT_MULTIPLY_ADDS = 1 << 22
_blas = None      # threadpoolctl's controllers of the BLAS libraries NumPy loaded
_pool = None      # (ThreadPoolExecutor, its number of threads), made at first use


def _blas_libraries():
    """threadpoolctl's controllers of the BLAS libraries NumPy loaded (found once)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas


def _thread_switches():
    """[(get, set)] of the BLAS libraries' thread counts: OpenBLAS's own C functions where
    threadpoolctl can name them (a call of about 0.1 us, against a few us through its
    Python wrappers, which a one-face call would pay at every model call), else the
    wrappers."""
    global _switches
    if _switches is None:
        switches = []
        for lib in _blas_libraries():
            symbol = getattr(lib, "_get_symbol", None)
            raw = (symbol("openblas_get_num_threads"), symbol("openblas_set_num_threads")) \
                if lib.internal_api == "openblas" and symbol else (None, None)
            switches.append(raw if None not in raw else (lib.get_num_threads, lib.set_num_threads))
        _switches = switches
    return _switches


_switches = None


class _OneBlasThread:
    """The context of ``one_blas_thread``: the first entry sets every BLAS library NumPy
    loaded to one thread, the last exit restores their counts; the
    entries between only count, so nested entries (a model's call, then each layer's)
    cost next to nothing. Threads share the count, as OpenBLAS shares its setting."""
    depth, previous = 0, []

    def __enter__(self):
        if _OneBlasThread.depth == 0:
            _OneBlasThread.previous = [(set_, get()) for get, set_ in _thread_switches()]
            for set_, n in _OneBlasThread.previous:
                if n != 1:
                    set_(1)
        _OneBlasThread.depth += 1

    def __exit__(self, *exc):
        _OneBlasThread.depth -= 1
        if _OneBlasThread.depth == 0:
            for set_, n in _OneBlasThread.previous:
                if n != 1:
                    set_(n)


_ONE_BLAS_THREAD = _OneBlasThread()


def one_blas_thread():
    """``with one_blas_thread():`` runs the block's BLAS products on one thread, then
    restores the count: OpenBLAS's own threads stay asleep, and tinycnn splits large
    products between its own threads (``matmul``, ``on_cores``). Every Function's forward
    and backward, and a model's call, run inside one."""
    return _ONE_BLAS_THREAD


_cores_outside = None   # Numba's thread count outside a ``one_numba_thread`` block, inside one
_share = threading.local()   # ``.inside``: this thread runs one of several ``on_cores`` jobs


def core_count() -> int:
    """How many threads tinycnn splits work between: Numba's count (``numba.set_num_threads``
    lowers it; inside ``one_numba_thread``, the count outside it), 1 when the kernels are
    serial, and 1 inside one of several ``on_cores`` jobs (the other cores run the others)."""
    if not PARALLEL or getattr(_share, "inside", False):
        return 1
    return _cores_outside or numba.get_num_threads()


def _as_share(job):
    """job(), with ``core_count()`` 1 in this thread meanwhile: a product inside a job that
    shares the cores with others runs where it is rather than wait for a pool thread
    that is busy with another job (or with this one)."""
    before = getattr(_share, "inside", False)
    _share.inside = True
    try:
        return job()
    finally:
        _share.inside = before


def on_cores(jobs):
    """Run the callables ``jobs`` at once, the first in this thread and each other in a
    pool thread, with BLAS on one thread meanwhile; returns their results in order. The
    jobs must not depend on each other (they may write disjoint parts of one array).
    A single job runs in this thread, with every core still its to split."""
    global _pool
    with one_blas_thread():
        if len(jobs) == 1:
            return [jobs[0]()]
        if _pool is None or _pool[1] < len(jobs) - 1:
            from concurrent.futures import ThreadPoolExecutor
            _pool = ThreadPoolExecutor(len(jobs) - 1, thread_name_prefix="tinycnn"), len(jobs) - 1
        futures = [_pool[0].submit(_as_share, job) for job in jobs[1:]]
        try:
            first = _as_share(jobs[0])
        finally:  # the others write into the caller's arrays: let them finish first
            rest = [f.result() for f in futures]
        return [first] + rest


def _forget_pool():
    global _pool
    _pool = None  # a forked child has none of its parent's threads


def split_evenly(n, parts):
    """``parts`` contiguous slices covering range(n), as equal as can be."""
    bounds = [n * i // parts for i in range(parts + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(parts)]


def matmul(a, b, out=None):
    """``a @ b`` for 2-D float32 ``a`` (M, K) and ``b`` (K, N), on tinycnn's threads with BLAS
    on one thread each: rows of ``a`` split between the threads when there are enough of
    them, else the summed axis K split and the threads' partial products added (a weight
    gradient: few rows, a long sum), or its columns when there are few rows and many
    columns. Small products run in this thread alone."""
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = memory.empty((m, n), np.result_type(a, b))
    multiply_adds = m * k * n
    threads = 1 if multiply_adds < 2 * SPLIT_MULTIPLY_ADDS else min(core_count(), multiply_adds // SPLIT_MULTIPLY_ADDS)
    if threads < 2:
        with one_blas_thread():
            return np.matmul(a, b, out=out)
    if m >= 32 * threads:
        on_cores([functools.partial(np.matmul, a[rows], b, out=out[rows]) for rows in split_evenly(m, threads)])
        return out
    if n >= 32 * threads:   # few rows, many columns (a kernel's Winograd transform): split the columns
        on_cores([functools.partial(np.matmul, a, b[:, cols], out=out[:, cols]) for cols in split_evenly(n, threads)])
        return out
    if multiply_adds < 8 * SPLIT_MULTIPLY_ADDS:   # the partial products' sum costs more than a split saves
        with one_blas_thread():
            return np.matmul(a, b, out=out)
    parts = on_cores([functools.partial(np.matmul, a[:, ks], b[ks], out=memory.empty((m, n), out.dtype))
                      for ks in split_evenly(k, threads)])
    out[...] = parts[0]
    for part in parts[1:]:
        out += part
    return out


def stacked_matmul(a, b, out):
    """out[p] = a[p] @ b[p] for stacks of products a (P, M, K) and b (P, K, N) (Winograd's,
    one per transform point; either may be a transposed view), by ``matmul``'s rule:
    a stack of fewer than twice ``SPLIT_MULTIPLY_ADDS`` multiply-adds runs in this thread,
    a larger one is split by its P products between tinycnn's threads (each product
    whole, so the result is the same either way). One face's Winograd products are such
    stacks, of few rows: reading each point's (K, N) matrix is most of their time, and
    two cores halve it (bench/README.md)."""
    p, m, k = a.shape
    multiply_adds = p * m * k * b.shape[2]
    threads = 1 if multiply_adds < 2 * SPLIT_MULTIPLY_ADDS else min(core_count(), p)
    if threads < 2:
        with one_blas_thread():
            return np.matmul(a, b, out=out)
    on_cores([functools.partial(np.matmul, a[s], b[s], out=out[s]) for s in split_evenly(p, threads)])
    return out


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
    os.register_at_fork(after_in_child=_forget_pool)


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

