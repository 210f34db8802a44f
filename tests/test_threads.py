"""tinycnn keeps its cores to itself: its products run on one BLAS thread, split between
tinycnn's own threads (``tinycnn.backend``), so no BLAS thread spins after a call
returns, whatever the process set before or after importing NumPy.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tinycnn import backend

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("m, k, n", [
    (3000, 300, 200),     # enough rows: the rows are split between the threads
    (40, 20000, 300),     # few rows, a long sum: the summed axis is split, partial products added
    (50, 40, 30),         # small: one thread, one call
])
@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_is_the_product(m, k, n, transposed):
    rng = np.random.default_rng(m + k)
    a = rng.standard_normal((k, m) if transposed else (m, k)).astype(np.float32)
    a = a.T if transposed else a            # a weight gradient's cols.T is such a view
    b = rng.standard_normal((k, n)).astype(np.float32)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    out = np.full((m, n), np.nan, np.float32)
    got = backend.matmul(a, b, out=out)
    assert got is out and got.dtype == np.float32
    # float32 sums of k products of unit normals: errors grow as sqrt(k) times the unit roundoff
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.sqrt(k) * 10)
    np.testing.assert_allclose(backend.matmul(a, b), expected, rtol=0, atol=1e-5 * np.sqrt(k) * 10)


def test_on_cores_runs_every_job_and_keeps_their_order():
    out = np.zeros(8)

    def job(i):
        out[i] = i + 1
        return i * 10
    assert backend.on_cores([functools.partial(job, i) for i in range(3)]) == [0, 10, 20]
    assert out[:3].tolist() == [1, 2, 3]


@pytest.mark.parametrize("p, m, k, n", [
    (36, 9, 128, 256),    # one face's F(4x4) products on a 12x12 map: large, split by point
    (36, 9, 8, 16),       # small: one thread, one call
    (3, 200, 300, 400),   # large but few points: as many threads as points at most
])
def test_stacked_matmul_is_the_product_of_each_pair(p, m, k, n, monkeypatch):
    """Split or not, each point's product is computed whole, so the result is the same."""
    rng = np.random.default_rng(p + m)
    a = rng.standard_normal((p, m, k)).astype(np.float32)
    b = rng.standard_normal((p, n, k)).astype(np.float32).transpose(0, 2, 1)   # a transposed view, as U^T
    jobs = []
    on_cores = backend.on_cores
    monkeypatch.setattr(backend, "core_count", lambda: 2)
    monkeypatch.setattr(backend, "on_cores", lambda js: jobs.append(len(js)) or on_cores(js))
    out = np.full((p, m, n), np.nan, np.float32)
    assert backend.stacked_matmul(a, b, out) is out
    with backend.one_blas_thread():   # the same products, unsplit (BLAS's threads might sum in another order)
        np.testing.assert_array_equal(out, np.matmul(a, b))
    large = p * m * k * n >= 2 * backend.SPLIT_MULTIPLY_ADDS
    assert jobs == ([2] if large else [])


def test_a_job_among_several_sees_one_core():
    """Inside one of several ``on_cores`` jobs the other cores are taken: a product there
    must run where it is (a job that waited for the pool's one busy thread would wait for
    itself), and a job alone keeps every core."""
    seen = backend.on_cores([backend.core_count, backend.core_count])
    alone = backend.on_cores([backend.core_count])
    assert seen == [1, 1]
    assert alone == [backend.core_count()]


def test_one_blas_thread_restores_the_count_and_nests():
    libraries = backend._blas_libraries()
    if not libraries:
        pytest.skip("NumPy reports no BLAS library that threadpoolctl can control")
    before = [lib.get_num_threads() for lib in libraries]
    with backend.one_blas_thread():
        with backend.one_blas_thread():
            assert all(lib.get_num_threads() == 1 for lib in libraries)
        assert all(lib.get_num_threads() == 1 for lib in libraries)   # still inside the outer block
    assert [lib.get_num_threads() for lib in libraries] == before


USER_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np                      # NumPy first, as a user's script does; no variables set
    import tinycnn as tc
    import fer_models

    rng = np.random.default_rng(0)
    model = fer_models.build("small3")
    opt = tc.optim.Adam(model.parameters(), lr=1e-3)
    x, y = rng.random((64, 48, 48, 1), dtype=np.float32), rng.integers(0, 7, 64)
    for _ in range(2):
        loss = tc.losses.softmax_cross_entropy(model(x, training=True), y)
        opt.zero_grad(); loss.backward(); opt.step()
    model.predict(rng.random((256, 48, 48, 1), dtype=np.float32))
    model.predict(x[:1])

    def cpu():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    before = cpu()
    time.sleep(1.0)                         # idle: a spinning thread would burn CPU meanwhile
    print(json.dumps({"idle_cpu_s": cpu() - before}))
""")


def test_no_thread_keeps_a_core_busy_after_a_call_returns():
    """OpenBLAS's idle workers spin for about 0.1 s after each product they share (the
    default timeout), which showed as about 0.1 s of CPU over this second before tinycnn
    ran its products on its own threads."""
    proc = subprocess.run([sys.executable, "-c", USER_SCRIPT], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env={k: v for k, v in os.environ.items()
                                         if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    idle = json.loads(proc.stdout.strip().splitlines()[-1])["idle_cpu_s"]
    assert idle < 0.03, f"{idle * 1e3:.0f} ms of CPU during one idle second after tinycnn's calls returned"


# -- the caching pool (tinycnn.memory) -----------------------------------------------------------
def test_pool_reuses_a_buffer_only_once_nothing_refers_to_it():
    from tinycnn import memory
    shape = (memory.MIN_BYTES // 4 + 10,)
    a = memory.empty(shape)
    view = a[5:].reshape(-1)[::2]          # a view of a view: still refers to a's buffer
    del a
    b = memory.empty(shape)
    assert not np.shares_memory(view, b)   # the buffer behind ``view`` is still in use
    held, used = memory.cached_bytes()
    del view
    c = memory.empty(shape)                # now the first buffer is free again, and taken
    assert memory.cached_bytes() == (held, used) and not np.shares_memory(b, c)
    small = memory.empty((3, 4))
    assert small.base is None or small.base.nbytes < memory.MIN_BYTES   # small arrays: NumPy's own
    del b, c
    memory.empty_cache()
    held, used = memory.cached_bytes()
    assert held == used   # every free buffer let go; what is left, something still refers to


def test_a_returned_array_is_never_overwritten_by_a_later_call():
    """Outputs come from the pool: one a caller still holds must not be handed out again."""
    import tinycnn as tc
    from tinycnn.layers import Conv2D, MaxPool2D
    from tinycnn import memory
    model = tc.Sequential([Conv2D(64, 3, padding="same", activation="relu"), MaxPool2D()],
                          input_shape=(48, 48, 1), name="pooled")
    rng = np.random.default_rng(0)
    x1, x2 = (rng.random((256, 48, 48, 1), dtype=np.float32) for _ in range(2))
    for training in (False, True):
        first = model(x1, training=training).data
        assert first.nbytes >= memory.MIN_BYTES and memory.cached_bytes()[1] > 0   # it did come from the pool
        kept = first.copy()
        for _ in range(3):
            model(x2, training=training)
        np.testing.assert_array_equal(first, kept)


@pytest.mark.parametrize("channels", [1, 2, 8])   # few columns: the blocked sum split between threads
def test_weight_gradient_of_an_empty_batch_is_zero(channels):
    """No images: no rows to split between the threads (once a division by zero)."""
    from tinycnn.kernels import conv
    x, dy = np.zeros((0, 5, 5, channels), np.float32), np.zeros((0, 3, 3, 4), np.float32)
    dw = conv.conv2d_grad_weight_fast(x, dy, (3, 3, channels, 4), (1, 1), ((0, 0), (0, 0)))
    assert dw.shape == (3, 3, channels, 4) and not dw.any()
