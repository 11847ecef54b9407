"""Every form FER2013 comes in (fer_kaggle.inputs, data, folders), on files made from the bundled sample."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import DEMO

from fer_kaggle.data import competition as data, folders, inputs
from fer_kaggle.core.errors import FerKaggleError

N_TRAIN, N_PUBLIC, N_PRIVATE = 30, 8, 7
USAGE = ["Training"] * N_TRAIN + ["PublicTest"] * N_PUBLIC + ["PrivateTest"] * N_PRIVATE


@pytest.fixture(scope="module")
def rows(demo_train):
    """45 real rows: (images, labels)."""
    images, labels = demo_train
    n = len(USAGE)
    return images[:n], labels[:n]


def _pixels(image):
    return " ".join(map(str, image.ravel()))


def _write_csv(path, header, rows):
    path.write_text("\n".join([header, *(",".join(map(str, row)) for row in rows)]) + "\n")
    return path


def _fer2013(tmp_path, rows, name="fer2013.csv", header="emotion,pixels,Usage", usage=USAGE):
    images, labels = rows
    order = [c.strip().lower() for c in header.split(",")]
    table = []
    for image, label, use in zip(images, labels, usage):
        values = {"emotion": label, "pixels": _pixels(image), "usage": use}
        table.append([values[c] for c in order])
    return _write_csv(tmp_path / name, header, table)


def _source(paths, option=None):
    return inputs.resolve(paths, option)


def _load(tmp_path, paths, option=None):
    return inputs.load(_source(paths, option), tmp_path / "cache")[0]


# ---------------------------------------------------------------- CSV forms

def test_kaggle_challenge_files(tmp_path, rows):
    images, labels = rows
    train = _write_csv(tmp_path / "train.csv", "emotion,pixels", [(l, _pixels(i)) for i, l in zip(images, labels)])
    test = _write_csv(tmp_path / "test.csv", "pixels", [(_pixels(i),) for i in images[:5]])
    loaded = _load(tmp_path, [train, test])
    np.testing.assert_array_equal(loaded.train_images, images)
    np.testing.assert_array_equal(loaded.train_labels, labels)
    assert loaded.test_ids.tolist() == [0, 1, 2, 3, 4], "Kaggle test.csv ids are the 0-based row order"
    np.testing.assert_array_equal(loaded.test_images, images[:5])
    assert loaded.test_labels is None


def test_competition_and_kaggle_files_give_the_same_arrays(tmp_path, rows):
    images, labels = rows
    kaggle = _write_csv(tmp_path / "k.csv", "emotion,pixels", [(l, _pixels(i)) for i, l in zip(images, labels)])
    competition = _write_csv(tmp_path / "c.csv", "label,feature", [(l, _pixels(i)) for i, l in zip(images, labels)])
    for a, b in zip(data.read_train(kaggle), data.read_train(competition)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, header", [("fer2013.csv", "emotion,pixels,Usage"),
                                          ("icml_face_data.csv", "emotion, Usage, pixels")])
def test_single_file_forms(tmp_path, rows, name, header):
    images, labels = rows
    path = _fer2013(tmp_path, rows, name, header)
    source = _source([path])
    assert source.kind == "combined"
    assert data.read_table(path).form.name == name
    loaded = _load(tmp_path, [path])
    np.testing.assert_array_equal(loaded.train_images, images[:N_TRAIN])
    np.testing.assert_array_equal(loaded.train_labels, labels[:N_TRAIN])
    assert loaded.test_ids.tolist() == list(range(N_TRAIN, len(USAGE))), "test ids: the file's 0-based data rows"
    np.testing.assert_array_equal(loaded.test_images, images[N_TRAIN:])
    np.testing.assert_array_equal(loaded.test_labels, labels[N_TRAIN:])
    assert loaded.test_usage.tolist() == USAGE[N_TRAIN:]


def test_single_file_with_usage_in_another_case_and_quotes(tmp_path, rows):
    usage = [u.lower() for u in USAGE]
    path = _fer2013(tmp_path, rows, usage=usage)
    path.write_text(path.read_text().replace("emotion,pixels,Usage", '"emotion","pixels","Usage"'))
    assert _load(tmp_path, [path]).test_usage.tolist() == USAGE[N_TRAIN:]


def test_format_option_insists_on_a_form(tmp_path, rows):
    path = _fer2013(tmp_path, rows)
    assert _source([path], "icml").kind == "combined", "icml and fer2013 are the same content"
    train = _write_csv(tmp_path / "train.csv", "emotion,pixels", [(0, _pixels(rows[0][0]))])
    test = _write_csv(tmp_path / "test.csv", "pixels", [(_pixels(rows[0][0]),)])
    with pytest.raises(FerKaggleError, match=r"train.csv: line 1 has columns 'emotion,pixels'.*--format "
                                             r"competition: 'label,feature'"):
        _source([train, test], "competition")
    with pytest.raises(FerKaggleError, match="--format fer2013: that form is one file"):
        _source([train, test], "fer2013")


@pytest.mark.parametrize("edit, fragments", [  # lines[k] is line k + 1
    (lambda lines: lines.__setitem__(3, lines[3].replace("Training", "Validation")),
     ["line 4", "Usage 'Validation'", "Training, PublicTest, PrivateTest"]),
    (lambda lines: lines.__setitem__(4, "9" + lines[4][1:]), ["line 5", "emotion 9 is outside 0-6"]),
    (lambda lines: lines.__setitem__(5, lines[5].replace(" ", " 300 ", 1)), ["line 6", "'300'"]),
    (lambda lines: lines.__setitem__(6, lines[6].replace(" ", ",", 1)), ["line 7", "expected 3 fields"]),
    (lambda lines: lines.__setitem__(7, lines[7].rsplit(" ", 1)[0] + ",Training"), ["line 8", "found 2303"]),
])
def test_single_file_validation(tmp_path, rows, edit, fragments):
    """The foundation's validation rules hold for fer2013.csv rows: file, line and problem named."""
    path = _fer2013(tmp_path, rows)
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FerKaggleError) as info:
        _load(tmp_path, [path])
    for fragment in [str(path), *fragments]:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("usage, missing", [(["Training"] * 45, "PublicTest or PrivateTest"),
                                            (["PublicTest"] * 45, "Training")])
def test_single_file_needs_both_splits(tmp_path, rows, usage, missing):
    path = _fer2013(tmp_path, rows, usage=usage)
    with pytest.raises(FerKaggleError, match=f"has no {missing} rows"):
        _load(tmp_path, [path])


def test_icml_rows_are_checked_with_the_icml_header(tmp_path, rows):
    path = _fer2013(tmp_path, rows, "icml_face_data.csv", "emotion, Usage, pixels")
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",Training,", ",Train,")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FerKaggleError, match=r"icml_face_data.csv: line 3: Usage 'Train'"):
        _load(tmp_path, [path])


def test_one_path_that_is_not_a_single_file_form(tmp_path):
    with pytest.raises(FerKaggleError) as info:
        _source([DEMO / "train.csv.xz"])
    assert "competition train" in str(info.value) and "TRAIN TEST OUT" in str(info.value)


def test_single_file_given_as_train_says_give_it_alone(tmp_path, rows):
    path = _fer2013(tmp_path, rows)
    with pytest.raises(FerKaggleError, match="give it alone"):
        _source([path, DEMO / "test.csv.xz"])


def test_unknown_csv_names_columns_first_row_and_forms_tried(tmp_path):
    path = _write_csv(tmp_path / "faces.csv", "image,mood", [("a.png", "happy")])
    with pytest.raises(FerKaggleError) as info:
        _source([path])
    message = str(info.value)
    for fragment in (str(path), "'image,mood'", "line 2 starts 'a.png,happy'", "'label,feature'", "'pixels'",
                     "'emotion,pixels,Usage'", "'emotion, Usage, pixels'"):
        assert fragment in message, (fragment, message)


# ---------------------------------------------------------------- image folders

def _save(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def _image_tree(root, rows, spellings=None, suffix=".png"):
    """root/<class folder>/<i>.png for each row; `spellings` maps label -> folder name."""
    images, labels = rows
    names = spellings or dict(enumerate(data.CLASS_NAMES))
    for i, (image, label) in enumerate(zip(images, labels)):
        _save(root / names[int(label)] / f"{i:04d}{suffix}", image)
    return root


def _flat(root, images, suffix=".png"):
    for i, image in enumerate(images):
        _save(root / f"{i:04d}{suffix}", image)
    return root


def _in_file_order(root, images, labels):
    """Rows as the folder reader orders them: sorted by class folder name, then file name."""
    paths = sorted(root.rglob("*.png"))
    index = [int(p.stem) for p in paths]
    return images[index], labels[index]


SPELLINGS = [
    {0: "angry", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise", 6: "neutral"},
    {0: "Angry", 1: "Disgusted", 2: "Fearful", 3: "HAPPY", 4: "Sad", 5: "Surprised", 6: "Neutral"},
    {k: str(k) for k in range(7)},
]


@pytest.mark.parametrize("spellings", SPELLINGS, ids=["lower", "other_spellings", "digits"])
def test_class_folders_map_by_name_not_alphabet(tmp_path, rows, spellings):
    images, labels = rows
    train = _image_tree(tmp_path / "train", rows, spellings)
    test = _flat(tmp_path / "test", images[:4])
    loaded = _load(tmp_path, [train, test])
    want_images, want_labels = _in_file_order(train, images, labels)
    np.testing.assert_array_equal(loaded.train_labels, want_labels)
    np.testing.assert_array_equal(loaded.train_images, want_images)
    assert loaded.test_ids.tolist() == ["0000.png", "0001.png", "0002.png", "0003.png"]
    np.testing.assert_array_equal(loaded.test_images, images[:4])
    assert loaded.test_labels is None


def test_labelled_test_folder_and_data_root(tmp_path, rows):
    images, labels = rows
    _image_tree(tmp_path / "data" / "Train", (images[:30], labels[:30]))
    _image_tree(tmp_path / "data" / "Test", (images[30:], labels[30:]))
    source = _source([tmp_path / "data"])
    assert source.kind == "folders"
    loaded = _load(tmp_path, [tmp_path / "data"])
    names = {int(label): name for label, name in enumerate(data.CLASS_NAMES)}
    expected_ids = sorted(f"{names[int(l)]}/{i:04d}.png" for i, l in enumerate(labels[30:]))
    assert loaded.test_ids.tolist() == expected_ids, "test ids: paths relative to the test folder"
    index = [30 + int(Path(i).stem) for i in expected_ids]
    np.testing.assert_array_equal(loaded.test_labels, labels[index])
    np.testing.assert_array_equal(loaded.test_images, images[index])
    assert set(loaded.test_usage.tolist()) == {"test"}


def test_unknown_class_folder_is_a_clear_error(tmp_path, rows):
    train = _image_tree(tmp_path / "train", rows)
    (train / "happy").rename(train / "joy")
    with pytest.raises(FerKaggleError) as info:
        _load(tmp_path, [train, _flat(tmp_path / "test", rows[0][:2])])
    message = str(info.value)
    assert str(train / "joy") in message and "'joy' is not a class name" in message
    assert "angry" in message and "surprised" in message


def test_conversions_are_made_and_reported(tmp_path, rows):
    """Colour, larger and 16-bit images become 48x48 gray; JPEG decodes close to the original."""
    images, labels = rows
    train = _image_tree(tmp_path / "train", (images[:10], labels[:10]))
    big = cv2.resize(images[0], (96, 96), interpolation=cv2.INTER_CUBIC)
    _save(train / "happy" / "colour.png", cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    _save(train / "sad" / "deep.png", images[1].astype(np.uint16) * 257)
    _save(train / "fear" / "photo.jpg", cv2.cvtColor(images[2], cv2.COLOR_GRAY2BGR))
    (train / "fear" / "notes.txt").write_text("not an image")
    (train / "fear" / ".DS_Store").write_bytes(b"\0\0")
    _, train_images, _, log = None, *folders.read_train_folder(train)
    assert len(train_images) == 13
    assert "13 images" in log and "2 colour to gray" in log and "1 resized from 96x96" in log
    assert "1 16-bit to 8-bit" in log and "skipped 1 files that are not images (notes.txt)" in log
    image, notes = folders.read_image(train / "sad" / "deep.png")
    np.testing.assert_array_equal(image, images[1])
    image, notes = folders.read_image(train / "fear" / "photo.jpg")
    assert image.shape == (48, 48) and np.abs(image.astype(int) - images[2]).mean() < 4
    image, _ = folders.read_image(train / "happy" / "colour.png")
    assert np.abs(image.astype(int) - images[0]).mean() < 4


def test_corrupt_image_is_named(tmp_path, rows):
    train = _image_tree(tmp_path / "train", rows)
    bad = train / "sad" / "broken.jpg"
    bad.write_text("this is not a jpeg")
    with pytest.raises(FerKaggleError, match=r"broken.jpg: not a readable image"):
        folders.read_train_folder(train)


def test_images_outside_class_folders_are_refused(tmp_path, rows):
    train = _image_tree(tmp_path / "train", rows)
    _save(train / "stray.png", rows[0][0])
    with pytest.raises(FerKaggleError, match=r"stray.png: train images must sit in class folders"):
        folders.read_train_folder(train)


def test_test_folder_mixing_images_and_class_folders_is_refused(tmp_path, rows):
    test = _image_tree(tmp_path / "test", rows)
    _save(test / "loose.png", rows[0][0])
    with pytest.raises(FerKaggleError, match="mixes images with class folders"):
        folders.read_test_folder(test)


def test_folder_train_with_a_csv_test_is_refused(tmp_path, rows):
    train = _image_tree(tmp_path / "train", rows)
    with pytest.raises(FerKaggleError, match="the test images must be a folder too"):
        _source([train, DEMO / "test.csv.xz"])


def test_data_folder_without_train_and_test(tmp_path, rows):
    _image_tree(tmp_path / "data" / "training", rows)
    with pytest.raises(FerKaggleError, match=r"needs train/ and test/ subfolders.*found training/"):
        _source([tmp_path / "data"])


def test_folder_cache_follows_the_content(tmp_path, rows):
    images, labels = rows
    train = _image_tree(tmp_path / "train", rows)
    test = _flat(tmp_path / "test", images[:3])
    first = _load(tmp_path, [train, test])
    again = _load(tmp_path, [train, test])
    assert again.train_fingerprint == first.train_fingerprint
    np.testing.assert_array_equal(again.test_ids, first.test_ids)
    np.testing.assert_array_equal(again.train_images, first.train_images)
    _save(train / "happy" / "extra.png", images[0])
    changed = _load(tmp_path, [train, test])
    assert changed.train_fingerprint != first.train_fingerprint and len(changed.train_labels) == len(labels) + 1
