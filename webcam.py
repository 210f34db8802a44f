#!/usr/bin/env python
"""Live facial-emotion recognition from a webcam, a video, an image or a folder of images:
``python webcam.py --help``.

The program is ``fer_programs/webcam.py``; ``pip install .`` installs it as the command
``fer-webcam``. This file runs it from a checkout.
"""
import sys

from fer_programs.webcam import main

if __name__ == "__main__":
    sys.exit(main())
