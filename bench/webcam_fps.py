#!/usr/bin/env python
"""Frames per second of webcam.py's pipeline at 640x480 with one face, per predictor.

    python bench/webcam_fps.py                                   # the bundled model, with and without --tta
    python bench/webcam_fps.py --weights runs/a runs/ens.npz --frames 200

Each frame is a 640x480 gradient with one FER-2013 PublicTest face scaled to 200 px (the
size of a face at arm's length from a laptop camera), a different face every frame;
frames where the Haar detector finds no face, or two, are left out of the figures.
The pipeline is what ``webcam.py`` runs per frame (``EmotionPipeline.analyse``:
detection on the frame scaled to 320 px, crop, prepare, one model call), on one thread
as webcam.py's default ``--threads 1``. Reported: the medians of detection,
classification and the whole frame, and 1000 / median frame time as frames per second
(camera capture and drawing not included). Close other programs first.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def frames_with_faces(n, data):
    import cv2
    import numpy as np
    files = sorted((Path(data) / "test").glob("*/PublicTest_*.png"))
    if not files:
        sys.exit(f"error: no PublicTest_*.png faces under {data}/test/<class>/ (--data)")
    rng = np.random.default_rng(0)
    row = np.linspace(80, 160, 640).astype(np.uint8)
    background = np.repeat(np.tile(row, (480, 1))[:, :, None], 3, axis=2)
    for k, i in enumerate(rng.choice(len(files), n, replace=False)):
        face = cv2.imread(str(files[i]), cv2.IMREAD_GRAYSCALE)
        frame = background.copy()
        left = 220 + (k % 9 - 4) * 8   # drifting a little, as a face in front of a camera
        frame[140:340, left:left + 200] = cv2.resize(face, (200, 200), interpolation=cv2.INTER_CUBIC)[:, :, None]
        yield frame


def measure(weights, tta, frames):
    import numpy as np

    from fer_models.detect import EmotionPipeline
    pipeline = EmotionPipeline.from_weights(weights, tta=tta)
    pipeline.warm_up()
    detect, classify, total = [], [], []
    for frame in frames:
        t0 = time.perf_counter()
        result = pipeline.analyse(frame)
        t1 = time.perf_counter()
        if len(result.faces) == 1:
            detect.append(result.detect_ms)
            classify.append(result.classify_ms)
            total.append(1000 * (t1 - t0))
    if not total:
        return None
    return {"frames": len(total), "detect_ms": float(np.median(detect)),
            "classify_ms": float(np.median(classify)), "frame_ms": float(np.median(total)),
            "fps": 1000 / float(np.median(total)), "name": pipeline.classifier.model.name}


def main(argv=None):
    from fer_models.data import default_location
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", nargs="+", default=[None], metavar="FILE",
                   help="predictors to time (weights, ensemble files, run folders, Keras files); "
                        "default: the bundled model")
    p.add_argument("--frames", type=int, default=120, help="frames per predictor")
    p.add_argument("--data", type=Path, default=default_location(), help="FER-2013 image folders")
    p.add_argument("--no-tta", action="store_true", help="time only without mirror averaging")
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits   # webcam.py --threads 1
    import numba
    numba.set_num_threads(1)
    frames = list(frames_with_faces(args.frames, args.data))
    print(f"{len(frames)} frames of 640x480, one face of 200 px each; load average {os.getloadavg()[0]:.2f}")
    print("| predictor | tta | frames | detection ms | classification ms | frame ms | frames/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with threadpool_limits(1):
        for weights in args.weights:
            for tta in ((False,) if args.no_tta else (False, True)):
                r = measure(weights, tta, frames)
                if r is None:
                    print(f"| {weights or 'bundled'} | {tta} | 0 | no single face found | | | |")
                    continue
                print(f"| {weights or 'bundled'} ({r['name']}) | {'yes' if tta else 'no'} | {r['frames']} | "
                      f"{r['detect_ms']:.1f} | {r['classify_ms']:.1f} | {r['frame_ms']:.1f} | {r['fps']:.0f} |")


if __name__ == "__main__":
    main()
