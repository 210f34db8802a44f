"""The programs, on top of ``fer_models`` and ``tinycnn``: ``train`` (the command
``fer-train``, or ``python train.py`` in a checkout) and ``webcam`` (``fer-webcam``, or
``python webcam.py``).

This package imports nothing, and must not: ``train`` sets OpenBLAS's thread timeout
before NumPy is first imported, and ``webcam`` its thread counts before NumPy and Numba
are, so neither may be imported after ``fer_models`` (which imports both).
"""
