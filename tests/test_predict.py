"""Faces in photos: a real FER2013 face pasted into a picture is found, cut out and predicted."""
import contextlib
import io

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from fer_kaggle import cli
from fer_kaggle.serve import detect
from fer_kaggle.data.competition import CLASS_NAMES
from fer_kaggle.serve.inference import load_ensemble

pytestmark = pytest.mark.slow  # every test here runs a whole pipeline or reads one

# Demo train row 300 (outside the 300 rows the fixture run trains on): a frontal face that OpenCV's
# Haar cascade finds once, at IoU 0.93-0.98 with the pasted square, at 160-256 px, anywhere on a noisy
# or plain background, as PNG or JPEG, and still at minNeighbors=10 (chosen by trying rows 0-599;
# about 1 FER2013 face in 10 is found at all, the others being turned, tilted or cut too tightly).
FACE_ROW = 300
FACE_BOX = (160, 96, 192, 192)  # x, y, w, h where the upscaled face is pasted
PHOTO_SHAPE = (400, 520)


def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["predict", *map(str, argv)])
    return status, out.getvalue(), err.getvalue()


def _photo(demo_train, background="noise"):
    """A 520x400 picture with demo row FACE_ROW upscaled to 192 px at FACE_BOX."""
    if background == "noise":
        photo = np.random.default_rng(0).integers(0, 256, PHOTO_SHAPE).astype(np.uint8)
    else:
        photo = np.full(PHOTO_SHAPE, 128, np.uint8)
    x, y, w, h = FACE_BOX
    photo[y:y + h, x:x + w] = cv2.resize(demo_train[0][FACE_ROW], (w, h), interpolation=cv2.INTER_CUBIC)
    return photo


def _save(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def _iou(a, b):
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


def _ensemble_probs(run, faces):
    with torch.inference_mode():
        return load_ensemble(run)(torch.as_tensor(np.asarray(faces))[:, None]).numpy()


@pytest.mark.parametrize("name,background", [("face.png", "noise"), ("face.jpg", "plain")])
def test_one_face_is_found_where_it_is_and_predicted_like_the_ensemble(finished_run, demo_train, tmp_path,
                                                                       name, background):
    run, _ = finished_run
    photo = _save(tmp_path / name, _photo(demo_train, background))
    status, stdout, stderr = _cli(photo, "--run", run, "--out", tmp_path / "faces.csv")
    assert status == 0, stderr
    table = pd.read_csv(tmp_path / "faces.csv")
    assert list(table.columns) == ["file", "face", "x", "y", "w", "h", *CLASS_NAMES, "label"]
    assert len(table) == 1 and table["file"][0] == str(photo) and table["face"][0] == 0
    x, y, w, h = (int(table[k][0]) for k in "xywh")
    assert _iou((x, y, w, h), FACE_BOX) > 0.8  # 0.93-0.98 measured: the crop is framed as FER2013's are
    gray = cv2.imread(str(photo), cv2.IMREAD_GRAYSCALE)
    face = cv2.resize(gray[y:y + h, x:x + w], (48, 48), interpolation=cv2.INTER_AREA)
    expected = _ensemble_probs(run, [face])[0]
    assert np.abs(table[list(CLASS_NAMES)].to_numpy()[0] - expected).max() < 1e-5
    assert table["label"][0] == CLASS_NAMES[expected.argmax()]
    assert "1 face(s) in 1 of 1 image(s); 0 image(s) without a face" in stdout


def test_a_blank_image_is_reported_not_an_error(finished_run, demo_train, tmp_path):
    photos = tmp_path / "photos"
    _save(photos / "face.png", _photo(demo_train))
    blank = _save(photos / "blank.png", np.full(PHOTO_SHAPE, 200, np.uint8))
    status, stdout, _ = _cli(photos, "--run", finished_run[0], "--out", tmp_path / "faces.csv")
    assert status == 0
    assert f"{blank}: no face found" in stdout
    assert "1 face(s) in 1 of 2 image(s); 1 image(s) without a face" in stdout
    assert pd.read_csv(tmp_path / "faces.csv")["file"].tolist() == [str(photos / "face.png")]


def test_without_out_one_line_per_face_is_printed(finished_run, demo_train, tmp_path):
    photo = _save(tmp_path / "in" / "face.png", _photo(demo_train))
    status, stdout, _ = _cli(photo, "--run", finished_run[0])
    assert status == 0
    line = stdout.splitlines()[0]
    assert line.startswith(f"{photo} face 0 (x ") and any(f"): {name} 0." in line for name in CLASS_NAMES)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["face.png", "in"]


def test_an_unreadable_file_stops_with_its_name_and_nothing_written(finished_run, demo_train, tmp_path):
    photos = tmp_path / "photos"
    _save(photos / "a_face.png", _photo(demo_train))
    (photos / "broken.jpg").write_text("this is not a JPEG\n")
    out, annotated = tmp_path / "faces.csv", tmp_path / "annotated"
    status, stdout, stderr = _cli(photos, "--run", finished_run[0], "--out", out, "--annotate", annotated)
    assert status == 2 and stdout == ""
    assert stderr == f"error: {photos / 'broken.jpg'}: not a readable image (empty, corrupt, or not really " \
                     f"a .jpg file)\n"
    assert not out.exists() and not annotated.exists()
    status, _, stderr = _cli(tmp_path / "missing.jpg", "--run", finished_run[0], "--out", out)
    assert status == 2 and f"{tmp_path / 'missing.jpg'}: no such file or folder" in stderr
    assert not out.exists()


def test_annotate_writes_same_size_copies_with_the_box_drawn(finished_run, demo_train, tmp_path):
    photos = tmp_path / "photos"
    original = _photo(demo_train)
    _save(photos / "people" / "face.png", original)
    _save(photos / "blank.jpg", np.full(PHOTO_SHAPE, 200, np.uint8))
    out = tmp_path / "faces.csv"
    status, _, _ = _cli(photos, "--run", finished_run[0], "--annotate", tmp_path / "annotated", "--out", out)
    assert status == 0
    copy = cv2.imread(str(tmp_path / "annotated" / "people" / "face.png"), cv2.IMREAD_COLOR)
    assert copy.shape == (*PHOTO_SHAPE, 3)
    x, y, w, h = pd.read_csv(out)[["x", "y", "w", "h"]].iloc[0]
    assert copy[y + h // 2, x].tolist() == [0, 255, 0]                # the box's left edge, green
    assert (copy[y + 10:y + h - 10, x + 10:x + w - 10, 1] == original[y + 10:y + h - 10, x + 10:x + w - 10]).all()
    assert cv2.imread(str(tmp_path / "annotated" / "blank.jpg")).shape == (*PHOTO_SHAPE, 3)
    assert not list((tmp_path / "annotated").rglob("*.tmp-*"))


def test_no_detect_on_a_48px_row_equals_the_ensemble_on_that_row(finished_run, demo_test, tmp_path):
    row = demo_test[1][7]
    face = _save(tmp_path / "row7.png", row)
    status, _, _ = _cli(face, "--run", finished_run[0], "--no-detect", "--out", tmp_path / "faces.csv")
    assert status == 0
    table = pd.read_csv(tmp_path / "faces.csv")
    assert table[["x", "y", "w", "h"]].iloc[0].tolist() == [0, 0, 48, 48]
    expected = _ensemble_probs(finished_run[0], [row])[0]
    assert np.abs(table[list(CLASS_NAMES)].to_numpy()[0] - expected).max() < 1e-5


def test_the_crop_is_the_haar_box_two_percent_wider_on_each_side():
    assert detect.face_square((100, 50, 100, 100)) == (98, 48, 104, 104)
    gray = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    face = detect.crop(gray, (-5, -5, 20, 20))  # past the photo's corner: black there, as in FER2013
    assert face.shape == (48, 48) and face[:5, :5].max() == 0 and face[-5:, -5:].min() > 0
