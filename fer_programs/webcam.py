"""Live facial-emotion recognition from a webcam, a video, an image or a folder of images.

    python webcam.py                                  # camera 0, in a window (q/Esc quits, s saves a snapshot)
    python webcam.py --source clip.mp4 --output annotated.avi --json > frames.jsonl
    python webcam.py --source photos/ --output annotated/
    python webcam.py --serve                          # the browser app on http://127.0.0.1:8000

``pip install .`` installs this program as the command ``fer-webcam`` (the same options).

Faces are found with OpenCV's Haar cascade on the grayscale frame, cropped at the
box (``--margin`` adds some), turned into the training input (gray, 48x48, [0, 1]) and classified all
at once; see ``fer_models/detect.py``. ``--json`` prints one line per frame:

    {"frame": 0, "source": "clip.mp4", "width": 640, "height": 480,
     "faces": [{"box": [x, y, w, h], "label": "happy", "confidence": 0.91,
                "probabilities": {"angry": 0.01, ...}}],
     "time_ms": {"detect": 6.1, "classify": 1.9, "total": 8.6}}
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from pathlib import Path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm"}
VIDEO_CODECS = {".avi": "MJPG", ".mp4": "mp4v"}   # both written and read back by opencv-python's FFmpeg
WINDOW = "webcam.py: emotions  (q / Esc: quit, s: snapshot)"
PROG = "fer-webcam" if Path(sys.argv[0]).name == "fer-webcam" else "webcam.py"   # as the user typed it
# The thread pools a model call runs on: Numba's kernels and NumPy's BLAS (the
# convolutions' matrix products). Measured on a busy 2-core machine, one face through
# small3: 0.6 ms of CPU with one thread, 30 ms with two, whose idle workers spin.
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class UserError(Exception):
    """Something the user can fix (a camera that will not open, an unreadable file,
    missing weights): reported as one message, exit code 2, no traceback."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Detect faces and recognise their emotion (FER-2013's seven classes) live "
                    "from a camera, or from a video, an image or a folder of images. In the window: "
                    "q or Esc quits, s saves a snapshot; closing the window quits too.")
    src = p.add_argument_group("input and output")
    src.add_argument("--source", default="0",
                     help="a camera index (0, 1, ...), a video file, an image file, or a folder of images")
    src.add_argument("--output", metavar="PATH",
                     help="write the annotated result: a video (.avi or .mp4) for a camera or video source, "
                          "an image file for an image, a folder for a folder of images")
    src.add_argument("--json", action="store_true",
                     help="print one JSON line per frame to stdout: each face's box, label and probabilities, "
                          "and the frame's detection, classification and total time in ms")
    src.add_argument("--no-window", action="store_true",
                     help="show no window (implied by --output or --json, and when there is no display; "
                          "with none of these, headless runs print JSON lines)")
    src.add_argument("--snapshot-dir", default=".", metavar="DIR", help="where the s key saves snapshots")
    src.add_argument("--max-frames", type=int, default=0, metavar="N",
                     help="stop after N frames (0: until the source ends or you quit)")
    det = p.add_argument_group("detection")
    det.add_argument("--min-face", type=int, default=60, metavar="PX",
                     help="smallest face to detect, in pixels of the frame")
    det.add_argument("--margin", type=float, default=None, metavar="FRACTION",
                     help="added around each detected box before cropping, as a fraction of its size "
                          "(default 0: Haar boxes are about the size of FER-2013's crops, and classified best "
                          "as they are)")
    det.add_argument("--tilt", type=float, default=15.0, metavar="DEGREES",
                     help="where no face is found upright, search the frame again turned by +DEGREES and "
                          "-DEGREES (heads tilted sideways); 0: upright only")
    det.add_argument("--cascade", nargs="+", default=None, metavar="FILE",
                     help="OpenCV Haar cascades (names in cv2.data.haarcascades, or paths), tried in turn "
                          "where the ones before find no face (default: haarcascade_frontalface_default.xml, "
                          "then haarcascade_frontalface_alt2.xml; adding haarcascade_profileface.xml, run on "
                          "the frame and its mirror image, finds more turned faces and makes a frame without "
                          "a face about 3.6 times as slow)")
    det.add_argument("--detect-width", type=int, default=320, metavar="PX",
                     help="the frame is scaled down to this width for detection (faster); 0: full size")
    det.add_argument("--smooth", type=int, default=0, metavar="N",
                     help="average each face's probabilities over its last N frames (faces followed by "
                          "box overlap) so the label does not flicker; camera and video sources only")
    mod = p.add_argument_group("model")
    mod.add_argument("--weights", metavar="FILE",
                     help="weights written by train.py (a .npz, an ensemble .npz, or a run folder holding "
                          "best.npz), or a Keras model (.keras, .h5); default: the bundled model "
                          "fer_models/weights/bundled.npz")
    mod.add_argument("--input-scale", type=float, nargs=2, metavar=("LOW", "HIGH"),
                     help="pixel range the model takes, for a Keras model trained on other than [0, 1] "
                          "(e.g. --input-scale -1 1); default: what the file records, else 0 1")
    mod.add_argument("--classes", metavar="ORDER",
                     help="the model's output order, where the file does not record it: 'fer2013' (the CSV's "
                          "angry,disgust,fear,happy,sad,surprise,neutral), 'alphabetical' (this project's) or "
                          "the seven names separated by commas")
    mod.add_argument("--preprocessing", choices=("none", "equalize", "clahe", "standardize"),
                     help="contrast normalisation the model was trained with, where the file does not record it")
    mod.add_argument("--model", metavar="NAME",
                     help="architecture name, for weights files that do not record it (see train.py --list-models)")
    mod.add_argument("--tta", nargs="?", const="mirror", default=False, choices=("mirror", "zooms"),
                     help="test-time views averaged per face: 'mirror' (the default when given alone) the face "
                          "and its mirror image, nearly twice the classification time; 'zooms' those two each "
                          "also zoomed out and in by 8%%, six views, predict_emotion's default and the bundled "
                          "model's best on PublicTest, for photos rather than live video")
    mod.add_argument("--threads", type=int, default=1, metavar="N",
                     help="threads for the model (Numba's kernels and NumPy's BLAS); 0: their defaults "
                          "(all cores). One is fastest: a frame's few faces are too small a batch to share "
                          "out, and idle worker threads left spinning slow down detection and the machine")
    web = p.add_argument_group("browser app")
    web.add_argument("--serve", action="store_true",
                     help="start the web app instead: the page uses your browser's camera or an uploaded photo")
    web.add_argument("--host", default="127.0.0.1",
                     help="address to serve on; 0.0.0.0 exposes it to the network (browsers allow the camera "
                          "only on localhost or over HTTPS; photo upload works anyway)")
    web.add_argument("--port", type=int, default=8000, help="port to serve on")
    web.add_argument("--allow-host", action="append", metavar="NAME",
                     help="a host name the app may be reached by besides 127.0.0.1/localhost (the Host "
                          "header; others are refused against DNS rebinding); repeat for several")
    args = p.parse_args(argv)
    # ranges argparse cannot say: refused here, before any camera or model is opened
    if args.max_frames < 0:
        p.error(f"--max-frames must be >= 0 (0: no limit), got {args.max_frames}")
    if args.margin is not None and not 0.0 <= args.margin <= 1.0:
        p.error(f"--margin must be between 0 and 1 (a fraction of the box), got {args.margin}")
    if not 0.0 <= args.tilt <= 45.0:
        p.error(f"--tilt must be between 0 and 45 degrees (0: upright only), got {args.tilt}")
    for option in ("min_face", "detect_width", "smooth", "port"):
        if getattr(args, option) < 0:
            p.error(f"--{option.replace('_', '-')} must be >= 0, got {getattr(args, option)}")
    return args


# -- sources: each yields (name, BGR frame) ----------------------------------------------

CAMERA_HELP = """cannot open camera {index}. Things to try:
  - another camera index: --source {other}
  - permissions: on Linux be in the 'video' group (ls -l /dev/video*); on macOS allow the terminal
    under System Settings > Privacy & Security > Camera; on Windows, Settings > Privacy > Camera
  - close other programs that may be using the camera (video calls, a browser tab)
  - no camera at hand: run on a video or an image instead, e.g. --source clip.mp4"""


def open_capture(what):
    """A camera index or a video path -> (VideoCapture, first frame, its frame rate or None);
    UserError if it does not deliver a first frame."""
    import cv2
    if isinstance(what, int):   # OpenCV logs each backend it tried; our message says it better
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            cap = cv2.VideoCapture(what)
        finally:
            cv2.utils.logging.setLogLevel(level)
    else:
        cap = cv2.VideoCapture(what)
    ok, frame = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        if isinstance(what, int):
            raise UserError(CAMERA_HELP.format(index=what, other=1 if what == 0 else 0))
        raise UserError(f"cannot read a video from {what}: not a video file, or a codec this OpenCV lacks")
    fps = cap.get(cv2.CAP_PROP_FPS)
    return cap, frame, fps if 1 <= fps <= 240 else None


def capture_frames(cap, frame):
    """(frame index, frame) from an open capture, starting with the frame already read."""
    try:
        n, ok = 0, True
        while ok:
            yield n, frame
            n += 1
            ok, frame = cap.read()
    finally:
        cap.release()


def read_image(path: Path):
    import cv2
    import numpy as np
    # imdecode, not imread: imread cannot open non-ASCII paths on Windows
    data = np.fromfile(str(path), np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None


def folder_frames(folder: Path):
    files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    if not files:
        raise UserError(f"the folder {folder} holds no files")
    for f in files:
        image = read_image(f)
        if image is None:
            print(f"skipping {f}: not an image OpenCV can read", file=sys.stderr)
            continue
        yield f.name, image


def open_source(source: str):
    """-> (kind, frames, fps): kind in camera/video/image/folder, frames an iterator of
    (name, BGR frame), fps the rate the output video is written at."""
    if source.isdigit():
        cap, first, fps = open_capture(int(source))
        return "camera", capture_frames(cap, first), fps or 30.0
    path = Path(source)
    if not path.exists():
        raise UserError(f"--source {source}: no such file or folder (a camera is given by its index: --source 0)")
    if path.is_dir():
        return "folder", folder_frames(path), None
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        image = read_image(path)
        if image is None:
            raise UserError(f"cannot read an image from {path}")
        return "image", iter([(path.name, image)]), None
    cap, first, fps = open_capture(str(path))
    return "video", capture_frames(cap, first), fps or 25.0


# -- outputs ----------------------------------------------------------------------------

class Output:
    """--output: a video for camera/video sources, an image for an image, a folder for a folder."""

    def __init__(self, path: str, kind: str, fps: float | None):
        self.path, self.kind, self.fps, self.writer = Path(path), kind, fps, None
        if kind in ("camera", "video") and self.path.suffix.lower() not in VIDEO_CODECS:
            raise UserError(f"--output {path}: a video is written as {' or '.join(VIDEO_CODECS)}")
        if kind == "folder":
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.path.parent.exists():
            raise UserError(f"--output {path}: the folder {self.path.parent} does not exist")

    def write(self, name, image) -> None:
        import cv2
        if self.kind == "folder":
            target = self.path / name
            if target.suffix.lower() not in IMAGE_EXTENSIONS:
                target = target.with_suffix(".png")
            self._imwrite(target, image)
        elif self.kind == "image":
            self._imwrite(self.path / name if self.path.is_dir() else self.path, image)
        else:
            if self.writer is None:
                fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODECS[self.path.suffix.lower()])
                self.writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (image.shape[1], image.shape[0]))
                if not self.writer.isOpened():
                    raise UserError(f"--output {self.path}: OpenCV cannot write this video")
            self.writer.write(image)

    @staticmethod
    def _imwrite(target: Path, image) -> None:
        import cv2
        from tinycnn.model import write_atomic
        ok, data = cv2.imencode(target.suffix or ".png", image)
        if not ok:
            raise UserError(f"--output: cannot encode an image as {target.suffix}")
        # Python's own write, not ndarray.tofile: tofile's buffered C write loses a full disk's error
        write_atomic(target, lambda tmp: Path(tmp).write_bytes(data.tobytes()), suffix=".tmp" + (target.suffix or ".png"))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


# -- the window ---------------------------------------------------------------------------

def display_available() -> bool:
    """Whether a window can open. On Linux, opencv-python's Qt talks to an X server
    (XWayland under Wayland), and aborts the whole process, uncatchably, when $DISPLAY
    names none that answers: so knock first."""
    if not sys.platform.startswith("linux"):
        return True
    import re
    import socket
    m = re.fullmatch(r"(?P<host>[^:]*):(?P<n>\d+)(\.\d+)?", os.environ.get("DISPLAY", ""))
    if not m:
        return False
    try:
        if m["host"] in ("", "unix"):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(f"/tmp/.X11-unix/X{m['n']}")
        else:                                            # ssh -X: localhost:10.0
            socket.create_connection((m["host"], 6000 + int(m["n"])), timeout=2).close()
        return True
    except OSError:
        return False


class Window:
    """The OpenCV window: shows frames, answers q/Esc/s, notices being closed."""

    def __init__(self, snapshot_dir: str):
        import cv2
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
        self.snapshot_dir = Path(snapshot_dir)
        self.snapshots = 0

    def show(self, image, wait_for_key: bool) -> bool:
        """Show the frame; for images wait for a key (any key: next image).
        -> False when the user asked to quit."""
        import cv2
        cv2.imshow(WINDOW, image)
        while True:
            key = cv2.waitKey(50 if wait_for_key else 1) & 0xFF
            if not self.visible():
                return False          # closed with the window's own button
            if key in (ord("q"), 27):
                return False
            if key == ord("s"):
                self.snapshot(image)
            elif not wait_for_key or key != 255:
                return True

    @staticmethod
    def visible() -> bool:
        """False once the user has closed the window. OpenCV's Qt backend answers 0 for a
        hidden window, but raises (NULL guiReceiver) once the window manager's close
        button has destroyed it."""
        import cv2
        try:
            return cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:
            return False

    def snapshot(self, image) -> None:
        import cv2
        from tinycnn.model import write_atomic
        self.snapshots += 1
        path = self.snapshot_dir / f"snapshot-{time.strftime('%Y%m%d-%H%M%S')}-{self.snapshots}.png"
        png = cv2.imencode(".png", image)[1].tobytes()
        write_atomic(path, lambda tmp: Path(tmp).write_bytes(png), suffix=".tmp.png")
        print(f"saved {path}", file=sys.stderr)

    def close(self) -> None:
        import cv2
        try:
            cv2.destroyAllWindows()
        except cv2.error:     # already destroyed by the window manager
            pass


# -- main ---------------------------------------------------------------------------------

def contract_args(args) -> dict:
    """--preprocessing, --input-scale, --classes as ``load_model``'s overrides."""
    classes = args.classes
    if classes is not None and "," in classes:
        classes = [c.strip().lower() for c in classes.split(",")]
    return {"preprocessing": args.preprocessing, "input_scale": args.input_scale, "classes": classes}


def load_pipeline(args, smooth: int = 0):
    from fer_models.detect import DEFAULT_MARGIN, EmotionPipeline, FaceDetector
    from fer_models.predict import DEFAULT_WEIGHTS
    if args.weights is None and not DEFAULT_WEIGHTS.exists():
        raise UserError(f"the bundled model {DEFAULT_WEIGHTS} is missing. Train one "
                          f"(python train.py --data ../shared/fer2013 --model resfer --out runs/resfer) "
                          f"and pass --weights runs/resfer/best.npz")
    if args.weights is not None and not Path(args.weights).exists():
        raise UserError(f"--weights {args.weights}: no such file or folder")
    try:
        detector = FaceDetector(min_face=args.min_face, detect_width=args.detect_width,
                                tilts=(args.tilt, -args.tilt) if args.tilt else (),
                                **({"cascade": tuple(args.cascade)} if args.cascade else {}))
        pipeline = EmotionPipeline.from_weights(args.weights, args.model, tta=args.tta, detector=detector,
                                                contract=contract_args(args),
                                                margin=DEFAULT_MARGIN if args.margin is None else args.margin,
                                                smooth=smooth)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    pipeline.warm_up()
    return pipeline


def run(args) -> int:
    kind, frames, fps = open_source(args.source)
    pipeline = load_pipeline(args, smooth=args.smooth if kind in ("camera", "video") else 0)
    output = Output(args.output, kind, fps) if args.output else None
    headless = args.no_window or args.output or args.json or not display_available()
    json_lines = args.json or (headless and not args.output)
    if headless and not (args.json or args.output):
        print("no window (no display, or --no-window): printing JSON lines; --output saves the annotated "
              "result", file=sys.stderr)
    window = None
    if not headless:
        try:
            window = Window(args.snapshot_dir)
        except Exception as e:   # cv2.error: an OpenCV built without a GUI, a display that refuses
            print(f"cannot open a window ({str(e).strip().splitlines()[-1]}): printing JSON lines; "
                  f"--output saves the annotated result", file=sys.stderr)
            json_lines = True
    label = args.source if kind != "camera" else f"camera {args.source}"
    starts = deque(maxlen=30)   # when the last frames started: the FPS counter
    n = 0
    try:
        for name, frame in frames:
            t0 = time.perf_counter()
            starts.append(t0)
            fps = (len(starts) - 1) / (t0 - starts[0]) if len(starts) > 1 and kind in ("camera", "video") else None
            annotated, result = pipeline.process_frame(frame, fps)
            total_ms = 1000 * (time.perf_counter() - t0)
            if json_lines:
                record = {"frame": n, "source": label if kind in ("camera", "video") else str(name)}
                record.update(result.to_dict())
                record["time_ms"]["total"] = round(total_ms, 2)
                print(json.dumps(record), flush=True)
            if output is not None:
                output.write(name, annotated)
            n += 1
            if window is not None and not window.show(annotated, wait_for_key=kind in ("image", "folder")):
                break
            if args.max_frames and n >= args.max_frames:
                break
    finally:
        if output is not None:
            output.close()
        if window is not None:
            window.close()
    if n == 0:
        raise UserError(f"no frame could be read from {args.source}")
    print(f"{n} frame(s) from {label}" + (f", written to {args.output}" if output else ""), file=sys.stderr)
    return 0


def serve(args) -> int:
    import waitress

    from fer_models.server import LOCAL_HOSTS, MAX_UPLOAD_BYTES, create_app
    pipeline = load_pipeline(args)
    names = list(LOCAL_HOSTS) + list(args.allow_host or [])
    if args.host not in ("0.0.0.0", "::", ""):
        names.append(args.host)
    app = create_app(pipeline, allowed_hosts=names)
    if args.host in ("0.0.0.0", "::", ""):
        print(f"warning: --host {args.host} makes the app reachable from the network; it answers only "
              f"to the names {names} (add yours with --allow-host)", file=sys.stderr)
    print(f"open http://{'127.0.0.1' if args.host in ('0.0.0.0', '') else args.host}:{args.port}/ in a browser "
          f"(Ctrl-C stops)", file=sys.stderr)
    try:
        # a bounded server: 4 worker threads, 64 connections, idle connections closed after
        # 30 s. A body up to twice the upload limit is read and answered by the app (a JSON
        # 413 the page can show); a longer one is cut off by the server itself.
        waitress.serve(app, host=args.host, port=args.port, threads=4, connection_limit=64,
                       channel_timeout=30, max_request_body_size=2 * MAX_UPLOAD_BYTES,
                       ident="fer-webcam", _quiet=True)
    except OSError as e:
        raise UserError(f"cannot serve on {args.host}:{args.port}: {e.strerror or e}") from None
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads < 0:
        print(f"{PROG}: --threads must be >= 0", file=sys.stderr)
        return 2
    if args.threads:
        # Read once, when NumPy's BLAS and Numba are first imported (below), for every thread.
        n = str(min(args.threads, os.cpu_count() or 1))
        for var in THREAD_VARIABLES:
            os.environ[var] = n
    import tinycnn
    tinycnn.backend.keep_freed_memory()
    try:
        return serve(args) if args.serve else run(args)
    except UserError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except tinycnn.model.WriteError as e:   # --output or a snapshot on a full disk: the file and the cause
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:   # --json piped into head & co.: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
