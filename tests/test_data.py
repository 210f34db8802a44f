"""FER-2013 loading: labels by folder name, splits, the three layouts, skipping, caching.

Most tests build a small tree in tmp_path from a handful of real FER-2013 PNGs (with
their real names); one session-scoped test loads the whole shared data set.
"""
import csv
import functools
import os
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

import fer_models.data as data
from fer_models.classes import CLASSES, CSV_CODES, CSV_TO_INDEX, NUM_CLASSES
from fer_models.data import class_counts, default_location, load_fer2013

DATA = default_location()  # $FER2013_DIR, else ../shared/fer2013
needs_data = pytest.mark.skipif(not (DATA / "train").is_dir() or not (DATA / "test").is_dir(),
                                reason=f"FER-2013 not found at {DATA} (expected train/ and test/ there)")

# The README's table: class -> (Training, PublicTest, PrivateTest).
README_COUNTS = {"angry": (3995, 467, 491), "disgust": (436, 56, 55), "fear": (4097, 496, 528),
                 "happy": (7215, 895, 879), "neutral": (4965, 607, 626), "sad": (4830, 653, 594),
                 "surprise": (3171, 415, 416)}


# -- helpers --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def real_names(folder: str, cls: str, prefix: str) -> tuple[str, ...]:
    return tuple(sorted(n for n in os.listdir(DATA / folder / cls) if n.startswith(prefix)))


def real_file(folder, cls, prefix, i=0) -> Path:
    """The i-th (by name) real image of a class in the shared data, e.g. ("test", "sad", "PrivateTest_")."""
    return DATA / folder / cls / real_names(folder, cls, prefix)[i]


def build_tree(root: Path, layout, classes=CLASSES, per_class=2, rename=None):
    """Copy real faces into ``root`` and return {destination path: (split, label)}.

    layout: list of (folder created under root, source folder, source prefix, expected split).
    Class folders are created in reverse order so that creation order never equals CLASSES order.
    rename: optional f(dest_name, i) -> new name, to drop the Usage prefixes.
    """
    expected = {}
    for folder, src_folder, prefix, split in layout:
        for cls in reversed(classes):
            (root / folder / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                src = real_file(src_folder, cls, prefix, i)
                name = rename(src.name, i) if rename else src.name
                dst = root / folder / cls / name
                shutil.copy2(src, dst)
                expected[dst] = (split, CLASSES.index(cls))
    return expected


IMAGE_FOLDER = [("train", "train", "Training_", "Training"),
                ("test", "test", "PublicTest_", "PublicTest"),
                ("test", "test", "PrivateTest_", "PrivateTest")]


def check_loaded(loaded, expected):
    """Every split holds exactly the expected files, ordered by file name, with their pixels."""
    assert list(loaded) == ["Training", "PublicTest", "PrivateTest"]
    for split, (x, y) in loaded.items():
        files = sorted((p for p, (s, _) in expected.items() if s == split), key=lambda p: p.name)
        assert x.shape == (len(files), 48, 48, 1) and x.dtype == np.float32, split
        assert y.shape == (len(files),) and y.dtype == np.int64, split
        np.testing.assert_array_equal(y, [expected[p][1] for p in files], err_msg=split)
        for xi, p in zip(x, files):
            pixels = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            np.testing.assert_allclose(xi[..., 0], pixels / 255.0, atol=1e-6, err_msg=str(p))
        assert x.size == 0 or (x.min() >= 0.0 and x.max() <= 1.0)


def load_quietly(path, tmp_path, **kwargs):
    """load_fer2013 with the cache under tmp_path, failing on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_fer2013(path, cache_dir=tmp_path / "cache", progress=False, **kwargs)


def load_warning(path, tmp_path) -> tuple[dict, list[str]]:
    """load_fer2013, returning its result and the messages of the UserWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_fer2013(path, cache_dir=tmp_path / "cache", progress=False)
    return loaded, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def count_imread(monkeypatch) -> list:
    """Count calls of cv2.imread (still decoding for real)."""
    calls, real = [], cv2.imread
    monkeypatch.setattr(data.cv2, "imread", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    return calls


# -- classes --------------------------------------------------------------------------------

def test_class_order_and_csv_codes():
    assert CLASSES == ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    assert NUM_CLASSES == 7
    # fer2013.csv: 0=Angry 1=Disgust 2=Fear 3=Happy 4=Sad 5=Surprise 6=Neutral
    np.testing.assert_array_equal(CSV_TO_INDEX, [0, 1, 2, 3, 5, 6, 4])
    assert CSV_CODES[4] == "sad" and CLASSES[CSV_TO_INDEX[4]] == "sad"
    assert CSV_CODES[6] == "neutral" and CLASSES[CSV_TO_INDEX[6]] == "neutral"


def test_class_counts():
    np.testing.assert_array_equal(class_counts([3, 3, 0, 6]), [1, 0, 0, 2, 0, 0, 1])
    assert class_counts(np.array([], np.int64)).tolist() == [0] * 7
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        class_counts([7])
    with pytest.raises(ValueError, match="integer"):
        class_counts([0.5])


# -- image-folder layouts -------------------------------------------------------------------

@needs_data
def test_image_folder_layout_split_by_prefix(tmp_path):
    expected = build_tree(tmp_path / "fer", IMAGE_FOLDER)
    loaded = load_quietly(tmp_path / "fer", tmp_path)
    check_loaded(loaded, expected)
    assert [len(loaded[s][1]) for s in data.SPLITS] == [14, 14, 14]
    assert class_counts(loaded["PrivateTest"][1]).tolist() == [2] * 7


@needs_data
def test_label_comes_from_folder_name_not_folder_order(tmp_path):
    # Only two classes, created "surprise" first: inferring labels from folder order would
    # give happy 0 or 1; the name gives CLASSES.index("happy") == 3. Case does not matter.
    root = tmp_path / "fer"
    for folder, prefix in (("train", "Training_"), ("test", "PublicTest_")):
        for cls, dirname in (("surprise", "surprise"), ("happy", "Happy")):
            (root / folder / dirname).mkdir(parents=True)
            shutil.copy2(real_file(folder, cls, prefix), root / folder / dirname)
    loaded = load_quietly(root, tmp_path)
    happy_name = real_file("train", "happy", "Training_").name
    surprise_name = real_file("train", "surprise", "Training_").name
    y_by_name = dict(zip(sorted([happy_name, surprise_name]), loaded["Training"][1]))
    assert y_by_name[happy_name] == CLASSES.index("happy") == 3
    assert y_by_name[surprise_name] == CLASSES.index("surprise") == 6
    assert sorted(loaded["PublicTest"][1].tolist()) == [3, 6]


@needs_data
def test_unknown_class_folder_is_named_in_the_error(tmp_path):
    build_tree(tmp_path / "fer", IMAGE_FOLDER[:2], classes=("happy",), per_class=1)
    (tmp_path / "fer" / "train" / "contempt").mkdir()
    with pytest.raises(ValueError, match=r"'contempt' is not one of angry, disgust, .*surprise"):
        load_fer2013(tmp_path / "fer", cache_dir=tmp_path / "cache", progress=False)


@needs_data
def test_test_folder_without_prefix_is_public_test_with_warning(tmp_path):
    expected = build_tree(tmp_path / "fer", IMAGE_FOLDER[:1])
    expected.update(build_tree(tmp_path / "fer", [("test", "test", "PrivateTest_", "PublicTest")],
                               rename=lambda name, i: f"face_{i}.png"))
    loaded, messages = load_warning(tmp_path / "fer", tmp_path)
    assert len(messages) == 1 and "14 file(s) in test/ have no PublicTest_/PrivateTest_ prefix" in messages[0]
    assert len(loaded["PrivateTest"][1]) == 0 and loaded["PrivateTest"][0].shape == (0, 48, 48, 1)
    # file names repeat across classes (face_0.png in every class): order by name, then path
    assert class_counts(loaded["PublicTest"][1]).tolist() == [2] * 7
    assert len(loaded["Training"][1]) == 14


@needs_data
@pytest.mark.parametrize("val_name", ["validation", "val"])
def test_validation_variant_with_prefixes(tmp_path, val_name):
    expected = build_tree(tmp_path / "fer", [("train", "train", "Training_", "Training"),
                                             (val_name, "test", "PublicTest_", "PublicTest"),
                                             ("test", "test", "PrivateTest_", "PrivateTest")])
    check_loaded(load_quietly(tmp_path / "fer", tmp_path), expected)


@needs_data
def test_validation_variant_without_prefixes_uses_folders(tmp_path):
    def plain(name, i):
        return name.split("_", 1)[1]        # PublicTest_123.png -> 123.png
    expected = build_tree(tmp_path / "fer", [("train", "train", "Training_", "Training"),
                                             ("validation", "test", "PublicTest_", "PublicTest"),
                                             ("test", "test", "PrivateTest_", "PrivateTest")], rename=plain)
    check_loaded(load_quietly(tmp_path / "fer", tmp_path), expected)


@needs_data
def test_other_sizes_are_resized_to_48(tmp_path):
    build_tree(tmp_path / "fer", IMAGE_FOLDER[:2], classes=("fear",), per_class=1)
    big = cv2.resize(cv2.imread(str(real_file("train", "fear", "Training_", 5)), cv2.IMREAD_GRAYSCALE),
                     (96, 96), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / "fer" / "train" / "fear" / "Training_big.png"), big)
    x, y = load_quietly(tmp_path / "fer", tmp_path)["Training"]
    assert x.shape == (2, 48, 48, 1) and y.tolist() == [2, 2]
    names = sorted(p.name for p in (tmp_path / "fer" / "train" / "fear").iterdir())
    want = cv2.resize(big, (48, 48), interpolation=cv2.INTER_AREA) / 255.0
    np.testing.assert_allclose(x[names.index("Training_big.png"), ..., 0], want, atol=1e-6)


@needs_data
def test_unreadable_files_skipped_with_one_warning(tmp_path):
    expected = build_tree(tmp_path / "fer", IMAGE_FOLDER, per_class=1)
    (tmp_path / "fer" / "train" / "sad" / "Training_broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "fer" / "test" / "angry" / "PublicTest_empty.jpg").write_bytes(b"")
    (tmp_path / "fer" / "train" / "sad" / "notes.txt").write_text("not an image: ignored")
    loaded, messages = load_warning(tmp_path / "fer", tmp_path)
    assert len(messages) == 1
    assert "skipped 2 unreadable" in messages[0] and "train/sad/Training_broken.jpg" in messages[0]
    check_loaded(loaded, expected)
    # the cached load reports the same skipped files
    _, again = load_warning(tmp_path / "fer", tmp_path)
    assert again == messages


def test_wrong_layout_shows_expected_layouts(tmp_path):
    (tmp_path / "images" / "happy").mkdir(parents=True)
    with pytest.raises(ValueError) as info:
        load_fer2013(tmp_path, cache_dir=tmp_path / "cache", progress=False)
    message = str(info.value)
    for part in ("no FER-2013 layout recognised", "images/", "train/<class>/*.jpg", "validation/",
                 "fer2013.csv", "angry, disgust"):
        assert part in message
    with pytest.raises(FileNotFoundError, match="(?s)does not exist.*train/<class>"):
        load_fer2013(tmp_path / "nowhere", cache_dir=tmp_path / "cache", progress=False)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .csv"):
        load_fer2013(tmp_path / "notes.txt", cache_dir=tmp_path / "cache", progress=False)
    (tmp_path / "train" / "happy").mkdir(parents=True)
    (tmp_path / "test" / "happy").mkdir(parents=True)
    with pytest.raises(ValueError, match="found no image files"):
        load_fer2013(tmp_path, cache_dir=tmp_path / "cache", progress=False)


# -- cache ----------------------------------------------------------------------------------

@needs_data
def test_second_load_comes_from_cache(tmp_path, monkeypatch, capsys):
    build_tree(tmp_path / "fer", IMAGE_FOLDER, per_class=1)
    first = load_quietly(tmp_path / "fer", tmp_path)
    assert len(list((tmp_path / "cache").glob("fer2013-*.npz"))) == 1
    assert not list((tmp_path / "cache").glob("*.tmp"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("cv2.imread called: the cache was not used")
    monkeypatch.setattr(data.cv2, "imread", no_decoding)
    second = load_quietly(tmp_path / "fer", tmp_path)
    for split in data.SPLITS:
        np.testing.assert_array_equal(first[split][0], second[split][0])
        np.testing.assert_array_equal(first[split][1], second[split][1])
    assert capsys.readouterr().err == ""    # progress=False: no bar


@needs_data
def test_cache_rebuilt_when_files_added_changed_or_removed(tmp_path, monkeypatch):
    root = tmp_path / "fer"
    build_tree(root, IMAGE_FOLDER, per_class=1)
    calls = count_imread(monkeypatch)
    base = load_quietly(root, tmp_path)
    assert len(calls) == 21

    # added: a new training face of class "disgust"
    added = root / "train" / "disgust" / "Training_added.png"
    shutil.copy2(real_file("train", "disgust", "Training_", 3), added)
    calls.clear()
    grown = load_quietly(root, tmp_path)
    assert len(calls) == 22 and len(grown["Training"][1]) == 8
    assert class_counts(grown["Training"][1])[CLASSES.index("disgust")] == 2

    # changed: same name, other pixels (and so another size or mtime)
    shutil.copy2(real_file("train", "happy", "Training_", 4), added)
    os.utime(added, ns=(10**18, 10**18))
    calls.clear()
    changed = load_quietly(root, tmp_path)
    assert len(calls) == 22
    i = sorted(p.name for p in root.glob("train/*/*.png")).index("Training_added.png")
    want = cv2.imread(str(real_file("train", "happy", "Training_", 4)), cv2.IMREAD_GRAYSCALE) / 255.0
    np.testing.assert_allclose(changed["Training"][0][i, ..., 0], want, atol=1e-6)

    # removed: back to the original content, whose cache file is still there
    added.unlink()
    calls.clear()
    again = load_quietly(root, tmp_path)
    assert calls == []
    np.testing.assert_array_equal(again["Training"][0], base["Training"][0])


@needs_data
def test_cache_dir_from_environment(tmp_path, monkeypatch):
    build_tree(tmp_path / "fer", IMAGE_FOLDER[:2], classes=("neutral",), per_class=1)
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "env-cache"))
    load_fer2013(tmp_path / "fer", progress=False)
    assert len(list((tmp_path / "env-cache").glob("fer2013-*.npz"))) == 1


@needs_data
def test_corrupt_cache_file_is_rebuilt(tmp_path):
    build_tree(tmp_path / "fer", IMAGE_FOLDER[:2], classes=("angry",), per_class=1)
    first = load_quietly(tmp_path / "fer", tmp_path)
    (cache_file,) = (tmp_path / "cache").glob("fer2013-*.npz")
    cache_file.write_bytes(b"truncated")
    second = load_quietly(tmp_path / "fer", tmp_path)
    np.testing.assert_array_equal(first["Training"][0], second["Training"][0])


# -- the original CSV -----------------------------------------------------------------------

def write_csv(path: Path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows(rows)


@needs_data
def test_csv_codes_map_to_class_indices(tmp_path, monkeypatch):
    # The CSV's own codes, written out independently of fer_models.classes:
    codes = {"angry": 0, "disgust": 1, "fear": 2, "happy": 3, "sad": 4, "surprise": 5, "neutral": 6}
    rows, expected = [], {s: ([], []) for s in data.SPLITS}
    for usage, folder, prefix in (("Training", "train", "Training_"), ("PublicTest", "test", "PublicTest_"),
                                  ("PrivateTest", "test", "PrivateTest_")):
        for cls in ("sad", "neutral", "happy", "angry", "surprise", "disgust", "fear"):
            img = cv2.imread(str(real_file(folder, cls, prefix)), cv2.IMREAD_GRAYSCALE)
            rows.append([codes[cls], " ".join(map(str, img.ravel())), usage])
            expected[usage][0].append(img)
            expected[usage][1].append(CLASSES.index(cls))
    rows.insert(3, [2, "1 2 3", "Training"])     # a malformed row: skipped and counted
    write_csv(tmp_path / "fer2013.csv", rows)

    for path in (tmp_path / "fer2013.csv", tmp_path):   # the file, or the folder holding it
        loaded, messages = load_warning(path, tmp_path)
        assert len(messages) == 1 and "skipped 1 unreadable CSV row(s) (e.g. row 5)" in messages[0]
        for split in data.SPLITS:
            x, y = loaded[split]
            assert y.tolist() == expected[split][1]     # CSV row order kept
            assert y[0] == CLASSES.index("sad") == 5    # code 4 is sad, index 5
            np.testing.assert_allclose(x[..., 0], np.stack(expected[split][0]) / 255.0, atol=1e-6)

    monkeypatch.setattr(data, "_decode_csv", lambda *a: pytest.fail("CSV parsed again despite the cache"))
    load_warning(tmp_path, tmp_path)
    write_csv(tmp_path / "fer2013.csv", rows[:5])    # new bytes -> new key -> parsed again
    with pytest.raises(pytest.fail.Exception, match="parsed again"):
        load_warning(tmp_path, tmp_path)


def test_csv_without_needed_columns(tmp_path):
    (tmp_path / "fer2013.csv").write_text("label,image\n0,1 2 3\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) emotion, pixels, Usage; its header is \['label', 'image'\]"):
        load_fer2013(tmp_path, cache_dir=tmp_path / "cache", progress=False)


# -- the whole data set ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def full_fer2013(tmp_path_factory):
    return load_fer2013(DATA, cache_dir=tmp_path_factory.mktemp("fer-cache"), progress=False)


@needs_data
@pytest.mark.slow
def test_full_data_set_matches_readme_counts(full_fer2013):
    for i, split in enumerate(data.SPLITS):
        x, y = full_fer2013[split]
        assert x.shape == (len(y), 48, 48, 1) and x.dtype == np.float32 and y.dtype == np.int64
        want = [README_COUNTS[cls][i] for cls in CLASSES]
        assert class_counts(y).tolist() == want, split
    assert sum(len(y) for _, y in full_fer2013.values()) == 35887


@needs_data
def test_usage_prefix_wins_over_folder(tmp_path):
    # A PublicTest_ face misplaced in train/ still goes to PublicTest: the prefix is its Usage.
    expected = build_tree(tmp_path / "fer", IMAGE_FOLDER[:2], classes=("fear", "sad"), per_class=1)
    src = real_file("test", "sad", "PublicTest_", 1)
    shutil.copy2(src, tmp_path / "fer" / "train" / "sad")
    expected[tmp_path / "fer" / "train" / "sad" / src.name] = ("PublicTest", CLASSES.index("sad"))
    check_loaded(load_quietly(tmp_path / "fer", tmp_path), expected)
