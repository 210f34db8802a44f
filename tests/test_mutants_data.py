"""Checks of fer_models/data.py that its mutation run (tests/mutation/run.sh) showed missing:
where FER-2013 is looked for when no path is given, the stratified subsets that
train_distributed.py --limit and the notebooks train on, entries that are not faces
wherever a folder lists them, the texts of errors, warnings and progress bars, and the
CSV rows refused. Every face here is made by the test, so none needs FER-2013."""
import csv
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

import fer_models.data as data
from fer_models.classes import CLASSES
from fer_models.data import default_location, load_fer2013, stratified_subset

# Under mutmut (tests/mutation/run.sh) every call into the module goes through a trampoline,
# one frame deeper, so there a warning points at the trampoline: where a warning points is
# checked outside mutation testing only (equivalent.md lists the stacklevel mutants).
UNDER_MUTMUT = "MUTANT_UNDER_TEST" in os.environ


def test_default_location_is_the_environment_variable_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("FER2013_DIR", str(tmp_path / "faces"))
    assert default_location() == tmp_path / "faces"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FER2013_DIR", "~/fer")
    assert default_location() == tmp_path / "fer"


def test_default_location_without_the_variable_is_shared_beside_the_project(monkeypatch):
    monkeypatch.delenv("FER2013_DIR", raising=False)
    project = Path(data.__file__).resolve().parent.parent      # the checkout: fer_models/ is in it
    assert default_location() == project.parent / "shared" / "fer2013"


# 100 of class 0, 50 of class 3, 1 of class 6, interleaved
LABELS = np.array([0, 0, 3] * 50 + [6], np.int64)


@pytest.mark.parametrize("n", [30, 75, 151])
def test_stratified_subset_takes_each_class_in_proportion_at_least_one(n):
    idx = stratified_subset(LABELS, n, seed=0)
    assert idx.dtype.kind == "i" and np.all(np.diff(idx) > 0)      # sorted, no index twice
    counts = {c: int((LABELS[idx] == c).sum()) for c in (0, 3, 6)}
    total = {c: int((LABELS == c).sum()) for c in (0, 3, 6)}
    for c in (0, 3, 6):
        assert counts[c] == max(1, round(n * total[c] / len(LABELS))), (n, c, counts)


def test_stratified_subset_is_seeded_and_shuffled_within_each_class():
    a, b, c = (stratified_subset(LABELS, 30, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    zeros = np.flatnonzero(LABELS == 0)
    chosen = a[LABELS[a] == 0]
    # 20 of the 100 faces of class 0: a shuffle's first 20, not the 20 first of the class
    assert len(chosen) == 20 and not np.array_equal(chosen, zeros[:20])
    assert chosen.max() > zeros[40]


def test_class_counts_are_int64():
    assert data.class_counts([0, 6, 6]).dtype == np.int64


# -- listing and decoding image folders, with files made here (no FER-2013 needed) ----------

def face_png(path, value=100, size=48):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((size, size), value, np.uint8)
    img[0, 0] = 255 - value                      # not flat, so a mix-up of files would show
    cv2.imwrite(str(path), img)
    return img


def load(path, tmp_path, **kw):
    """load_fer2013 with a private cache and every warning's text."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_fer2013(path, cache_dir=tmp_path / "cache", **kw)
    return loaded, [str(w.message) for w in caught]


def junk_first(monkeypatch):
    """os.scandir as fer_models.data sees it, listing hidden and non-image entries before
    the images: a loop that stopped at the first of them would lose the rest."""
    real = os.scandir

    def scandir(path):
        entries = list(real(path))
        junk = [e for e in entries if e.name.startswith(".") or not e.name.lower().endswith(data.IMAGE_EXTENSIONS)
                or e.is_dir() and e.name.lower().endswith(data.IMAGE_EXTENSIONS)]
        return iter(junk + [e for e in entries if e not in junk])
    monkeypatch.setattr(data.os, "scandir", scandir)


def test_hidden_and_other_entries_are_passed_over_wherever_they_are_listed(tmp_path, monkeypatch):
    root = tmp_path / "fer"
    for split, folder in (("Training", "train"), ("PublicTest", "test"), ("PrivateTest", "test")):
        for cls in ("angry", "happy"):
            for i in range(2):
                face_png(root / folder / cls / f"{split}_{cls}{i}.png")
    for junk in ("train/.DS_Store", "train/README.txt", "test/labels.csv", "train/angry/notes.txt",
                 "train/angry/.hidden.png", "test/happy/._PublicTest_x.png"):
        (root / junk).write_bytes(b"not an image")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "train" / "happy" / "folder.png").mkdir()    # a folder named like an image
    junk_first(monkeypatch)
    loaded, messages = load(root, tmp_path, progress=False)
    assert messages == []                                 # nothing skipped as unreadable
    assert {s: class_counts_of(loaded[s][1]) for s in data.SPLITS} == {s: {0: 2, 3: 2} for s in data.SPLITS}


def class_counts_of(y):
    return {int(c): int(n) for c, n in zip(*np.unique(y, return_counts=True))}


def test_an_image_beside_the_class_folders_is_an_error_naming_it(tmp_path):
    root = tmp_path / "fer"
    face_png(root / "train" / "happy" / "Training_1.png")
    face_png(root / "test" / "happy" / "PublicTest_1.png")
    face_png(root / "train" / "stray.PNG")
    with pytest.raises(ValueError) as error:
        load_fer2013(root, cache_dir=tmp_path / "cache", progress=False)
    message = str(error.value)
    assert "stray.PNG" in message and "is not inside a class folder" in message
    assert f"images go in train/<class>/ with <class> one of {', '.join(CLASSES)}" in message


def test_unreadable_images_are_counted_and_the_first_five_named(tmp_path):
    root = tmp_path / "fer"
    face_png(root / "train" / "happy" / "Training_ok.png")
    face_png(root / "test" / "happy" / "PublicTest_ok.png")
    names = [f"Training_bad{i}.png" for i in range(6)]
    for name in names:
        (root / "train" / "sad").mkdir(parents=True, exist_ok=True)
        (root / "train" / "sad" / name).write_bytes(b"garbage")
    _, messages = load(root, tmp_path, progress=False)
    shown = ", ".join(f"train/sad/{n}" for n in names[:5])
    assert messages == [f"load_fer2013({str(root)!r}): skipped 6 unreadable image file(s) (e.g. {shown})"]


def test_a_one_pixel_image_is_an_image(tmp_path):
    root = tmp_path / "fer"
    face_png(root / "test" / "happy" / "PublicTest_ok.png")
    face_png(root / "train" / "fear" / "Training_tiny.png", value=77, size=1)   # its one pixel is 255 - 77
    loaded, messages = load(root, tmp_path, progress=False)
    assert messages == []
    x, y = loaded["Training"]
    assert y.tolist() == [CLASSES.index("fear")]
    np.testing.assert_allclose(x[0], np.float32(178) / np.float32(255))


def test_decoding_shows_a_progress_bar_only_when_asked(tmp_path, capsys):
    root = tmp_path / "fer"
    face_png(root / "train" / "happy" / "Training_1.png")
    face_png(root / "test" / "happy" / "PublicTest_1.png")
    load_fer2013(root, cache_dir=tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""
    load_fer2013(root, cache_dir=tmp_path / "shown", progress=True)
    err = capsys.readouterr().err
    assert "Decoding FER-2013 images: 100%" in err and "2/2" in err and "img/s]" in err
    load_fer2013(root, cache_dir=tmp_path / "by-default")          # shown by default
    assert "Decoding FER-2013 images: 100%" in capsys.readouterr().err
    write_csv(tmp_path / "fer2013.csv", [[3, "1 2 3 4", "Training"]])
    load_fer2013(tmp_path / "fer2013.csv", cache_dir=tmp_path / "csv", progress=True)
    err = capsys.readouterr().err
    assert "Decoding fer2013.csv: " in err and "row/s]" in err
    load_fer2013(tmp_path / "fer2013.csv", cache_dir=tmp_path / "csv-quiet", progress=False)
    assert capsys.readouterr().err == ""


# -- the CSV's rows ------------------------------------------------------------------------------

def write_csv(path, rows, header=("emotion", "pixels", "Usage")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def test_csv_rows_out_of_range_are_skipped_and_the_others_kept(tmp_path):
    good = " ".join(["9"] * 4)
    rows = [[3, good, "Training"],                # row 2: kept
            [7, good, "Training"],                # row 3: no class 7
            [-1, good, "Training"],               # row 4
            [3, "1 2 3 256", "Training"],         # row 5: a pixel past 255
            [3, "1 2 3 -1", "Training"],          # row 6: a pixel below 0
            [3, good, "Other"],                   # row 7: no such Usage
            [3, "", "PublicTest"],                # row 8: no pixels
            [3, "1 2 3", "PublicTest"],           # row 9: not a square
            [6, "200", "PublicTest"],             # row 10: one pixel is a 1x1 image: kept
            [3, "0 255 255 255", "PrivateTest"]]  # row 11: kept
    write_csv(tmp_path / "fer2013.csv", rows)
    loaded, messages = load(tmp_path / "fer2013.csv", tmp_path, progress=False)
    assert messages == [f"load_fer2013({str(tmp_path / 'fer2013.csv')!r}): skipped 7 unreadable CSV row(s) "
                        f"(e.g. row 3, row 4, row 5, row 6, row 7)"]
    assert [len(loaded[s][1]) for s in data.SPLITS] == [1, 1, 1]
    np.testing.assert_allclose(loaded["PublicTest"][0], np.float32(200) / np.float32(255))
    assert loaded["PublicTest"][1].tolist() == [CLASSES.index("neutral")]


def test_a_csv_face_of_another_size_is_resized_as_its_uint8_image(tmp_path):
    img = np.tile(np.array([[1, 1], [1, 0]], np.uint8), (48, 48))    # 96x96: each 2x2 block averages 0.75
    write_csv(tmp_path / "fer2013.csv", [[3, " ".join(map(str, img.ravel())), "Training"]])
    loaded, messages = load(tmp_path / "fer2013.csv", tmp_path, progress=False)
    assert messages == []
    expected = cv2.resize(img, (48, 48), interpolation=cv2.INTER_AREA)
    assert expected.max() == 1                   # OpenCV rounds 0.75 to 1 in uint8
    np.testing.assert_allclose(loaded["Training"][0][0, ..., 0], expected / np.float32(255))


def test_an_empty_csv_names_its_file_and_the_missing_columns(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"'.*empty\.csv' lacks column\(s\) emotion, pixels, Usage; its header is \[\]"):
        load_fer2013(tmp_path / "empty.csv", cache_dir=tmp_path / "cache", progress=False)


# -- finding the source: what the errors say --------------------------------------------------

def test_errors_name_the_path_and_what_it_holds(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"load_fer2013: '{missing}' does not exist"):
        load_fer2013(missing, cache_dir=tmp_path / "cache")
    (tmp_path / "faces.txt").write_text("x")
    with pytest.raises(ValueError, match=f"load_fer2013: '{tmp_path / 'faces.txt'}' is a file but not a .csv"):
        load_fer2013(tmp_path / "faces.txt", cache_dir=tmp_path / "cache")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"no FER-2013 layout recognised in '{empty}' \\(it holds: nothing\\)"):
        load_fer2013(empty, cache_dir=tmp_path / "cache")
    only_train = tmp_path / "only_train"                 # train/ without test/ is no layout
    face_png(only_train / "train" / "happy" / "Training_1.png")
    (only_train / "notes.md").write_text("x")
    with pytest.raises(ValueError, match=r"\(it holds: notes\.md, train/\)"):
        load_fer2013(only_train, cache_dir=tmp_path / "cache")
    many = tmp_path / "many"
    for i in range(11):
        (many / f"d{i:02d}").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"\(it holds: d00/, d01/, d02/, d03/, d04/, d05/, d06/, d07/, d08/, d09/, \.\.\.\)"):
        load_fer2013(many, cache_dir=tmp_path / "cache")
    (many / "d10").rmdir()                               # ten: all shown, no "..."
    with pytest.raises(ValueError, match=r"\(it holds: d00/, [^)]*, d09/\);"):
        load_fer2013(many, cache_dir=tmp_path / "cache")


def test_files_without_a_usage_prefix_go_to_their_folders_split(tmp_path):
    root = tmp_path / "fer"
    face_png(root / "train" / "happy" / "me.png")
    face_png(root / "test" / "sad" / "you.png")
    loaded, messages = load(root, tmp_path, progress=False)
    assert [len(loaded[s][1]) for s in data.SPLITS] == [1, 1, 0]
    assert loaded["Training"][1].tolist() == [CLASSES.index("happy")]
    assert len(messages) == 1 and "1 file(s) in test/ have no PublicTest_/PrivateTest_ prefix" in messages[0]


def test_one_readable_image_is_a_data_set_and_none_is_an_error_with_the_reasons(tmp_path):
    root = tmp_path / "fer"
    face_png(root / "train" / "happy" / "Training_1.png")
    (root / "test" / "happy").mkdir(parents=True)
    loaded, _ = load(root, tmp_path, progress=False)
    assert [len(loaded[s][1]) for s in data.SPLITS] == [1, 0, 0]
    assert loaded["PublicTest"][0].shape == (0, 48, 48, 1) and loaded["PublicTest"][1].dtype == np.int64
    (root / "train" / "happy" / "Training_1.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"load_fer2013: not one readable image; skipped 1 unreadable image file\(s\) "
                                         r"\(e\.g\. train/happy/Training_1\.png\)"):
        load_fer2013(root, cache_dir=tmp_path / "cache2", progress=False)
    (root / "test" / "happy" / "me.png").write_bytes(b"broken")   # a second note: the notes joined by "; "
    with pytest.raises(ValueError, match=r"the PrivateTest split\.; skipped 2 unreadable image file\(s\)"):
        load_fer2013(root, cache_dir=tmp_path / "cache3", progress=False)


def test_a_larger_image_is_resized_by_area(tmp_path):
    root = tmp_path / "fer"
    img = np.random.default_rng(0).integers(0, 256, (72, 72), dtype=np.uint8)   # 1.5x: area and bilinear differ
    (root / "train" / "happy").mkdir(parents=True)
    cv2.imwrite(str(root / "train" / "happy" / "Training_big.png"), img)
    face_png(root / "test" / "happy" / "PublicTest_1.png")
    loaded, _ = load(root, tmp_path, progress=False)
    expected = cv2.resize(img, (48, 48), interpolation=cv2.INTER_AREA)
    assert not np.array_equal(expected, cv2.resize(img, (48, 48)))
    np.testing.assert_allclose(loaded["Training"][0][0, ..., 0], expected / np.float32(255))


# -- the cache ---------------------------------------------------------------------------------

def small_tree(root):
    face_png(root / "train" / "happy" / "Training_1.png")
    face_png(root / "test" / "happy" / "PublicTest_1.png")
    return root


def test_the_cache_goes_under_the_home_folder_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("FER_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    load_fer2013(small_tree(tmp_path / "fer"), progress=False)
    assert len(list((tmp_path / "home" / ".cache" / "tinycnn-fer").glob("fer2013-*.npz"))) == 1


def test_the_cache_folder_is_made_with_its_parents_readable_by_all(tmp_path):
    cache = tmp_path / "a" / "b" / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # no "could not cache" warning
        load_fer2013(small_tree(tmp_path / "fer"), cache_dir=cache, progress=False)
    (cached,) = cache.glob("fer2013-*.npz")
    assert cached.stat().st_mode & 0o777 == 0o644
    assert list(cache.glob("*.tmp")) == []


def test_a_cache_that_cannot_be_written_is_a_warning_from_the_callers_line(tmp_path):
    (tmp_path / "blocked").write_text("a file where the cache folder would go")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_fer2013(small_tree(tmp_path / "fer"), cache_dir=tmp_path / "blocked" / "cache", progress=False)
    assert len(loaded["Training"][1]) == 1
    (w,) = caught
    assert UNDER_MUTMUT or w.filename == __file__
    assert str(w.message).startswith(f"load_fer2013: could not cache the decoded faces in {tmp_path / 'blocked' / 'cache'}")
    assert str(w.message).endswith("(Not a directory); the next load decodes them again")


def test_the_datas_own_warnings_point_at_the_callers_line(tmp_path):
    root = small_tree(tmp_path / "fer")
    (root / "train" / "happy" / "Training_2.png").write_bytes(b"broken")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_fer2013(root, cache_dir=tmp_path / "cache", progress=False)
    assert len(caught) == 1 and (UNDER_MUTMUT or caught[0].filename == __file__)


def test_a_failed_cache_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(data.np, "savez", full_disk)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_fer2013(small_tree(tmp_path / "fer"), cache_dir=tmp_path / "cache", progress=False)
    assert "(No space left on device)" in str(caught[0].message)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_small_class_gives_one_face_to_a_small_subset():
    labels = np.array([0] * 148 + [5] * 3, np.int64)     # 10 of 151: class 5's share rounds to 0
    idx = stratified_subset(labels, 10, seed=0)
    assert int((labels[idx] == 5).sum()) == 1 and int((labels[idx] == 0).sum()) == 10


def test_no_image_at_all_and_unprefixed_files_are_named(tmp_path):
    root = tmp_path / "fer"
    (root / "train" / "happy").mkdir(parents=True)
    (root / "test" / "happy").mkdir(parents=True)
    with pytest.raises(ValueError, match=f"found no image files \\({', '.join(data.IMAGE_EXTENSIONS)}\\) in '{root}'"):
        load_fer2013(root, cache_dir=tmp_path / "cache")
    for name in ("d.png", "a.png", "c.png", "b.png"):
        face_png(root / "test" / "happy" / name)
    face_png(root / "train" / "happy" / "Training_1.png")
    _, messages = load(root, tmp_path, progress=False)
    assert "4 file(s) in test/ have no PublicTest_/PrivateTest_ prefix (e.g. a.png, b.png, c.png) and" in messages[0]


def test_files_of_one_name_in_two_folders_are_ordered_by_their_path(tmp_path):
    """Within a split, faces are ordered by file name, then by path: a Training_ file in
    test/ comes before one of the same name in train/, though train/ is listed first."""
    root = tmp_path / "fer"
    face_png(root / "train" / "happy" / "Training_1.png", value=10)
    face_png(root / "test" / "happy" / "Training_1.png", value=20)
    face_png(root / "test" / "happy" / "PublicTest_1.png")
    loaded, _ = load(root, tmp_path, progress=False)
    x = loaded["Training"][0]
    assert len(x) == 2 and round(float(x[0, 1, 1, 0]) * 255) == 20 and round(float(x[1, 1, 1, 0]) * 255) == 10
