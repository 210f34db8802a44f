"""Loading FER-2013 into arrays, decoded once and cached.

    data = load_fer2013("../shared/fer2013")
    x_train, y_train = data["Training"]       # (28709, 48, 48, 1) float32 in [0, 1], (28709,) int64
    x_val, y_val = data["PublicTest"]         # choose models and settings on this
    x_test, y_test = data["PrivateTest"]      # report on this, once

Labels are indices into ``fer_models.classes.CLASSES``. They come from the class
folder's *name* (or the CSV's code), never from the order folders are listed in.

Three sources are understood (``path`` is the folder, or the CSV file itself):

    (a) train/<class>/*.png, test/<class>/*.png          the common image-folder layout (any format)
    (b) train/<class>/, validation/<class>/ (or val/), test/<class>/
    (c) fer2013.csv with columns emotion, pixels, Usage  the original Kaggle file

How image files are assigned to the three splits:

* A file whose name starts with an original Usage (``Training_``, ``PublicTest_``,
  ``PrivateTest_``) goes to that split, whichever folder it sits in: the prefix is
  the data set's own record of where the face belongs.
* Otherwise the folder decides: ``train/`` -> Training; in (b) ``validation/`` ->
  PublicTest and ``test/`` -> PrivateTest; in (a) ``test/`` -> PublicTest.
  So in (a) a ``test/`` without prefixes becomes PublicTest and PrivateTest is
  empty, with a warning: the folders alone do not say which half of a test set is
  the held-out one, and inventing a split would quietly make one up. Use such a
  test set for model selection only, or give it a ``validation/`` sibling.

The decoded pixels are cached as uint8 in ``<cache_dir>/fer2013-<key>.npz``. The key
is a hash of the source's content as seen cheaply: for images, the sorted relative
paths with each file's size and modification time (nanoseconds); for the CSV, its
bytes. Adding, removing, replacing or touching a file therefore gives a new key and
a fresh decode; a cached load reads one file and takes about a second. Old cache
files are left in place (a return to earlier content reuses them); delete the
folder to reclaim the space, about 80 MB per version of the full data set.

Class folders are matched by name, case-insensitively (``Happy/`` is happy); hidden
entries and files without an image extension (a README, labels.txt) are ignored.
If a folder holds both image folders and fer2013.csv, the image folders are used.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm   # the text bar: tqdm.auto needs ipywidgets in notebooks

from .classes import CLASSES, CSV_TO_INDEX, NUM_CLASSES

SPLITS = ("Training", "PublicTest", "PrivateTest")
IMAGE_SIZE = 48
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Bump when the decoding or the cache file's contents change, so old caches are not used.
_CACHE_VERSION = 1

_EXPECTED_LAYOUTS = """\
expected one of these under the given path:
  (a) train/<class>/*.jpg and test/<class>/*.jpg
      (test files named PublicTest_*.jpg / PrivateTest_*.jpg are split by that prefix)
  (b) train/<class>/, validation/<class>/ (or val/), test/<class>/
      (validation -> PublicTest, test -> PrivateTest, unless file names carry a Usage prefix)
  (c) fer2013.csv with columns emotion, pixels, Usage (path may be the CSV file itself)
with <class> one of: """ + ", ".join(CLASSES)


def default_location() -> Path:
    """Where FER-2013 is looked for when no path is given: ``$FER2013_DIR`` if set, else
    ``../shared/fer2013`` beside this project's folder (as the project's machines hold it)."""
    env = os.environ.get("FER2013_DIR")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "shared" / "fer2013"


def load_fer2013(path, cache_dir=None, progress=True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Load FER-2013 as arrays, split by its original Usage.

    Args:
        path: folder holding one of the layouts in the module docstring, or the
            fer2013.csv file.
        cache_dir: where decoded arrays are cached; default ``$FER_CACHE_DIR`` or
            ``~/.cache/tinycnn-fer/``.
        progress: show a tqdm bar while decoding (never shown on a cache hit).
    Returns:
        ``{"Training": (x, y), "PublicTest": (x, y), "PrivateTest": (x, y)}`` with
        x float32 (N, 48, 48, 1) scaled to [0, 1] and y int64 (N,) indices into
        ``CLASSES``. Within a split, image files are ordered by file name; CSV rows
        keep the file's order. A split with no data has N = 0.
    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: no layout recognised, a class folder with an unknown name, a
            CSV without the needed columns, or no readable image at all.
    Warns:
        UserWarning, once per load, if files (or CSV rows) could not be decoded and
        were skipped, or if a test/ folder had no Usage prefixes (see module docstring).
    """
    source = _find_source(Path(path))
    cache_file = _cache_dir(cache_dir) / f"fer2013-{_source_key(source)}.npz"
    cached = _read_cache(cache_file)
    if cached is None:
        decode = _decode_csv if source["kind"] == "csv" else _decode_images
        cached = decode(source, progress)
        try:
            _write_cache(cache_file, cached)
        except OSError as e:   # the cache only saves time: a full disk costs the next load a decode
            warnings.warn(f"load_fer2013: could not cache the decoded faces in {cache_file} ({e.strerror or e}); "
                          f"the next load decodes them again", stacklevel=2)
    for message in cached["notes"]:
        warnings.warn(f"load_fer2013({str(path)!r}): {message}", stacklevel=2)
    return {split: (cached["x"][split][..., None].astype(np.float32) / np.float32(255.0),
                    cached["y"][split].astype(np.int64))
            for split in SPLITS}


def stratified_subset(y, n, seed):
    """Indices (sorted) of about ``n`` examples of labels y (N,), taken per class in
    proportion (at least one of each): the first of a seeded shuffle of each class.
    For quick trials (train.py --limit) and the notebooks' reduced data."""
    rng = np.random.default_rng(seed)
    idx = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rng.shuffle(members)
        idx.append(members[:max(1, round(n * len(members) / len(y)))])
    return np.sort(np.concatenate(idx))


def class_counts(y) -> np.ndarray:
    """Number of examples of each class: y int (N,) in [0, 7) -> int64 (7,), in CLASSES order."""
    y = np.asarray(y)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.size == 0):
        raise ValueError(f"class_counts: y must be a 1-D array of integer labels, "
                         f"got dtype {y.dtype} shape {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise ValueError(f"class_counts: labels must lie in [0, {NUM_CLASSES}), "
                         f"got range [{y.min()}, {y.max()}]")
    return np.bincount(y.astype(np.int64), minlength=NUM_CLASSES).astype(np.int64)


# -- finding the source ---------------------------------------------------------------------

def _find_source(path: Path) -> dict:
    """Recognise the layout at ``path``; return a description used for the key and decoding.

    For images: ``{"kind": "images", "root": Path, "files": [(relpath, split, label, size,
    mtime_ns), ...], "notes": [...]}``. For the CSV: ``{"kind": "csv", "file": Path}``.
    """
    if not path.exists():
        raise FileNotFoundError(f"load_fer2013: {str(path)!r} does not exist; {_EXPECTED_LAYOUTS}")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return {"kind": "csv", "file": path}
        raise ValueError(f"load_fer2013: {str(path)!r} is a file but not a .csv; {_EXPECTED_LAYOUTS}")
    folders = {entry.name.lower(): Path(entry.path) for entry in os.scandir(path) if entry.is_dir()}
    validation = folders.get("validation", folders.get("val"))
    if "train" in folders and "test" in folders:
        if validation is None:   # (a)
            return _list_images(path, [(folders["train"], "Training"), (folders["test"], "PublicTest")])
        return _list_images(path, [(folders["train"], "Training"), (validation, "PublicTest"),
                                   (folders["test"], "PrivateTest")])
    if (path / "fer2013.csv").is_file():
        return {"kind": "csv", "file": path / "fer2013.csv"}
    found = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in os.scandir(path))
    shown = ", ".join(found[:10]) + (", ..." if len(found) > 10 else "") if found else "nothing"
    raise ValueError(f"load_fer2013: no FER-2013 layout recognised in {str(path)!r} "
                     f"(it holds: {shown}); {_EXPECTED_LAYOUTS}")


def _usage_prefix(name: str) -> str | None:
    for split in SPLITS:
        if name.startswith(split + "_"):
            return split
    return None


def _list_images(root: Path, folders: list[tuple[Path, str]]) -> dict:
    """Every image under ``folder/<class>/`` with its split, label, size and mtime."""
    files, notes, unprefixed_test = [], [], []
    for folder, default_split in folders:
        for class_dir in sorted(os.scandir(folder), key=lambda e: e.name):
            if class_dir.name.startswith("."):
                continue   # .DS_Store, .ipynb_checkpoints, ...
            if not class_dir.is_dir():
                if class_dir.name.lower().endswith(IMAGE_EXTENSIONS):
                    raise ValueError(f"load_fer2013: image {class_dir.path!r} is not inside a class folder; "
                                     f"images go in {folder.name}/<class>/ with <class> one of "
                                     f"{', '.join(CLASSES)}")
                continue   # a README or label file next to the class folders
            name = class_dir.name.lower()
            if name not in CLASSES:
                raise ValueError(f"load_fer2013: unknown class folder {class_dir.path!r}: "
                                 f"{class_dir.name!r} is not one of {', '.join(CLASSES)} "
                                 f"(labels come from the folder name, never from folder order)")
            label = CLASSES.index(name)
            for entry in os.scandir(class_dir.path):
                if entry.name.startswith(".") or not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                if not entry.is_file():
                    continue
                split = _usage_prefix(entry.name)
                if split is None:
                    split = default_split
                    if folder.name.lower() == "test" and default_split == "PublicTest":
                        unprefixed_test.append(entry.name)
                stat = entry.stat()
                relpath = Path(entry.path).relative_to(root).as_posix()
                files.append((relpath, split, label, stat.st_size, stat.st_mtime_ns))
    if not files:
        raise ValueError(f"load_fer2013: found no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                         f"in {str(root)!r}; {_EXPECTED_LAYOUTS}")
    if unprefixed_test:
        notes.append(f"{len(unprefixed_test)} file(s) in test/ have no PublicTest_/PrivateTest_ prefix "
                     f"(e.g. {', '.join(sorted(unprefixed_test)[:3])}) and were put in 'PublicTest'; "
                     f"'PrivateTest' holds only prefixed files. Add a validation/ folder to make "
                     f"test/ the PrivateTest split.")
    files.sort(key=lambda f: (Path(f[0]).name, f[0]))   # by file name: deterministic, class-independent
    return {"kind": "images", "root": root, "files": files, "notes": notes}


# -- cache ----------------------------------------------------------------------------------

def _cache_dir(cache_dir) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("FER_CACHE_DIR") or Path.home() / ".cache" / "tinycnn-fer"
    return Path(cache_dir).expanduser()


def _source_key(source: dict) -> str:
    """A hash of the source's content: file list with sizes and mtimes, or the CSV's bytes."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"fer2013 cache v{_CACHE_VERSION} size {IMAGE_SIZE} classes {','.join(CLASSES)}\n".encode())
    if source["kind"] == "csv":
        h.update(b"csv\n")
        with open(source["file"], "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    else:
        h.update(b"images\n")
        for relpath, split, label, size, mtime_ns in sorted(source["files"]):
            h.update(f"{relpath}\t{split}\t{label}\t{size}\t{mtime_ns}\n".encode())
    return h.hexdigest()


def _read_cache(cache_file: Path) -> dict | None:
    """The cached arrays, or None if there is no usable cache file."""
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            if int(z["version"]) != _CACHE_VERSION:
                return None
            return {"x": {s: z[f"x_{s}"] for s in SPLITS}, "y": {s: z[f"y_{s}"] for s in SPLITS},
                    "notes": [str(n) for n in z["notes"]]}
    except Exception:   # truncated or foreign file: decode again and overwrite it
        return None


def _write_cache(cache_file: Path, data: dict):
    """Write the npz to a temporary file in the same folder, then rename it into place,
    so a reader never sees half a file (two processes may race; the last rename wins)."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"version": np.array(_CACHE_VERSION), "notes": np.array(data["notes"], dtype=str)}
    for s in SPLITS:
        arrays[f"x_{s}"], arrays[f"y_{s}"] = data["x"][s], data["y"][s]
    fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=cache_file.stem + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)   # uncompressed: loading 80 MB of uint8 beats inflating it
        os.chmod(tmp, 0o644)        # mkstemp makes it private; it is only a copy of public data
        os.replace(tmp, cache_file)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# -- decoding -------------------------------------------------------------------------------

def _to_48(img: np.ndarray) -> np.ndarray:
    if img.shape != (IMAGE_SIZE, IMAGE_SIZE):
        img = cv2.resize(img, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    return img


def _skipped_note(skipped: list[str], what: str) -> str:
    return (f"skipped {len(skipped)} unreadable {what} (e.g. {', '.join(skipped[:5])})")


def _collect(per_split: dict[str, list], labels: dict[str, list], notes: list[str]) -> dict:
    x = {s: (np.stack(per_split[s]) if per_split[s] else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8))
         for s in SPLITS}
    y = {s: np.asarray(labels[s], dtype=np.int64) for s in SPLITS}
    if sum(len(v) for v in y.values()) == 0:
        raise ValueError(f"load_fer2013: not one readable image; {'; '.join(notes)}")
    return {"x": x, "y": y, "notes": notes}


def _decode_images(source: dict, progress: bool) -> dict:
    """Decode every listed file as 48x48 grayscale uint8; unreadable ones are skipped."""
    images = {s: [] for s in SPLITS}
    labels = {s: [] for s in SPLITS}
    skipped = []
    for relpath, split, label, _, _ in tqdm(source["files"], desc="Decoding FER-2013 images",
                                            unit="img", disable=not progress):
        img = cv2.imread(str(source["root"] / relpath), cv2.IMREAD_GRAYSCALE)
        if img is None or img.size == 0:
            skipped.append(relpath)
            continue
        images[split].append(_to_48(img))
        labels[split].append(label)
    notes = list(source["notes"])
    if skipped:
        notes.append(_skipped_note(skipped, "image file(s)"))
    return _collect(images, labels, notes)


def _decode_csv(source: dict, progress: bool) -> dict:
    """Parse fer2013.csv: ``emotion`` (CSV code), ``pixels`` (2304 space-separated ints), ``Usage``.

    Rows that do not parse (wrong pixel count, bad code) are skipped and counted.
    """
    import csv

    images = {s: [] for s in SPLITS}
    labels = {s: [] for s in SPLITS}
    skipped = []
    with open(source["file"], newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in ("emotion", "pixels", "Usage") if c not in header]
        if missing:
            raise ValueError(f"load_fer2013: {str(source['file'])!r} lacks column(s) {', '.join(missing)}; "
                             f"its header is {header}; {_EXPECTED_LAYOUTS}")
        i_emotion, i_pixels, i_usage = (header.index(c) for c in ("emotion", "pixels", "Usage"))
        for row_number, row in enumerate(tqdm(reader, desc="Decoding fer2013.csv", unit="row",
                                              disable=not progress), start=2):
            try:
                code = int(row[i_emotion])
                usage = row[i_usage].strip()
                pixels = np.array(row[i_pixels].split(), dtype=np.int64)
                side = int(round(np.sqrt(pixels.size)))
                if (usage not in SPLITS or not 0 <= code < NUM_CLASSES or pixels.size == 0
                        or side * side != pixels.size or pixels.min() < 0 or pixels.max() > 255):
                    raise ValueError
            except (ValueError, IndexError):
                skipped.append(f"row {row_number}")
                continue
            images[usage].append(_to_48(pixels.astype(np.uint8).reshape(side, side)))
            labels[usage].append(CSV_TO_INDEX[code])
    notes = [_skipped_note(skipped, "CSV row(s)")] if skipped else []
    return _collect(images, labels, notes)


__all__ = ["load_fer2013", "class_counts", "SPLITS", "IMAGE_SIZE"]
