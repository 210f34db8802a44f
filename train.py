#!/usr/bin/env python
"""Train and evaluate a tinycnn emotion recogniser on FER-2013: ``python train.py --help``.

The program is ``fer_programs/train.py``; ``pip install .`` installs it as the command
``fer-train``. This file runs it from a checkout, and keeps its names importable as
``train`` (the tests and ``train_distributed.py`` use them).
"""
import sys

from fer_programs.train import _HelpFormatter, main, member_probabilities, parse_args, write_json  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
