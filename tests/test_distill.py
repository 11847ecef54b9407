"""One small model: students of a finished run's ensemble, fold-honest, scored, predicted and exported."""
import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch

from fer_kaggle import cli
from fer_kaggle.core import runfolder
from fer_kaggle.student import distill
from fer_kaggle.serve import export
from fer_kaggle.serve.inference import load_ensemble

pytestmark = pytest.mark.slow  # trains on a finished run


def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([*map(str, argv)])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def distilled(finished_run, demo_train, demo_test, tmp_path_factory):
    """A copy of the finished run with its parse caches (as run.sh leaves them), distilled into fer_vgg_tiny."""
    run = tmp_path_factory.mktemp("distill") / "run"
    shutil.copytree(finished_run[0], run)
    fingerprint = json.loads((run / "folds.json").read_text())["train_fingerprint"]
    folder = runfolder.RunFolder(run)
    runfolder.save_cache(runfolder.cache_path(folder.cache_dir, "train", fingerprint),
                         {"images": demo_train[0][:300], "labels": demo_train[1][:300]})
    runfolder.save_cache(runfolder.cache_path(folder.cache_dir, "test", "0" * 16),
                         {"ids": demo_test[0][:40], "images": finished_run[1]})
    status, stdout, stderr = _cli("distill", "--run", run, "--backbone", "fer_vgg_tiny", "--epochs", "3")
    assert status == 0, stderr
    return run, stdout


def test_distill_prints_the_students_oof_beside_the_ensembles(distilled, demo_train):
    run, stdout = distilled
    summary = json.loads((run / "student.json").read_text())
    assert summary["backbone"] == "fer_vgg_tiny" and summary["folds"] == 2 and summary["epochs"] == 3
    ensemble = json.loads((run / "ensemble.json").read_text())
    assert summary["ensemble_oof_acc"] == ensemble["blends"][ensemble["kept"]]["oof_acc"]
    # the students' OOF accuracy is their own held-out predictions against the true labels
    labels = demo_train[1][:300]
    oof = np.zeros((300, 7))
    for k in range(2):
        saved = np.load(run / summary["model"] / f"fold{k}" / "oof.npz")
        oof[saved["rows"]] = saved["probs"]
    assert summary["oof_acc"] == pytest.approx((oof.argmax(1) == labels).mean())
    assert f"OOF accuracy {summary['oof_acc']:.4f}, the ensemble's {summary['ensemble_oof_acc']:.4f}" in stdout


def test_fold_k_students_learn_only_from_teachers_that_never_saw_fold_k(distilled, demo_train):
    run, _ = distilled
    summary = json.loads((run / "student.json").read_text())
    folds = np.loadtxt(run / "folds.csv", delimiter=",", skiprows=1, usecols=3, dtype=int)
    images = demo_train[0][:300]
    for k in range(2):
        (targets,) = run.glob(f"student/targets-*-fold{k}.npz")
        saved = np.load(targets)
        assert (saved["rows"] == np.flatnonzero(folds != k)).all()  # fold k's rows are never taught
        teachers, names = distill.fold_teachers(run, k)
        assert all(name.endswith(f"/fold{k}") for name in names)
        with torch.inference_mode():
            expected = teachers(torch.as_tensor(images[saved["rows"]])[:, None]).numpy()
            other, _ = distill.fold_teachers(run, 1 - k)
            elsewhere = other(torch.as_tensor(images[saved["rows"]])[:, None]).numpy()
        assert np.allclose(saved["train"], expected, atol=1e-5)
        assert not np.allclose(saved["train"], elsewhere, atol=1e-2)  # the teachers of the other fold differ
        assert saved["test"].shape == (40, 7)
    config = json.loads((run / summary["model"] / "fold0" / "config.json").read_text())
    assert config["label_smoothing"] == 0.0 and config["key_settings"]["distilled"]


def test_a_second_distill_reuses_the_students(distilled):
    run, _ = distilled
    before = (run / "student.json").read_text()
    stamps = sorted(p.stat().st_mtime_ns for p in run.glob("student/*/fold*/metrics.json"))
    status, _, stderr = _cli("distill", "--run", run, "--backbone", "fer_vgg_tiny", "--epochs", "3")
    assert status == 0, stderr
    assert sorted(p.stat().st_mtime_ns for p in run.glob("student/*/fold*/metrics.json")) == stamps
    assert json.loads((run / "student.json").read_text())["oof_acc"] == json.loads(before)["oof_acc"]


def test_predict_and_export_take_the_student(distilled, finished_run, tmp_path):
    run, _ = distilled
    module = load_ensemble(run, model="student")
    assert module.names == [f"{json.loads((run / 'student.json').read_text())['model']}/fold{k}" for k in range(2)]
    # the student's ONNX graph, uint8 input, gives PyTorch's probabilities within 1e-5
    out = tmp_path / "student.onnx"
    status, stdout, stderr = _cli("export", "--run", run, "--model", "student", "--input", "uint8", "--out", out)
    assert status == 0, stderr
    faces = finished_run[1][:16]
    ours = export.session(out).run(["probs"], {"pixels": faces[:, None].astype(np.uint8)})[0]
    with torch.inference_mode():
        reference = module(torch.as_tensor(faces)[:, None]).numpy()
        teachers = load_ensemble(run)(torch.as_tensor(faces)[:, None]).numpy()
    assert np.abs(ours - reference).max() <= 1e-5
    assert not np.allclose(reference, teachers, atol=1e-3)  # the student, not the ensemble
    # and predict reads faces with it
    status, stdout, stderr = _cli("predict", "--run", run, "--model", "student", "--no-detect", _png(tmp_path, faces[0]))
    assert status == 0 and "face 0 (x 0, y 0, 48x48)" in stdout, stderr


def _png(tmp_path, face):
    import cv2
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), face)
    return path


def test_a_run_without_a_student_says_how_to_make_one(finished_run, tmp_path):
    status, _, stderr = _cli("predict", "--run", finished_run[0], "--model", "student", tmp_path / "x.png")
    assert status == 2 and "no student here; make one first: python -m fer_kaggle.distill" in stderr


def test_bench_video_times_the_ensemble_and_the_student_with_each_detector(distilled):
    run, _ = distilled
    status, stdout, stderr = _cli("bench", "video", "--workdir", run, "--frames", "12")
    assert status == 0, stderr
    lines = [line for line in stdout.splitlines() if "frames/s" in line]
    assert [line.split()[:4:3] for line in lines] == [["ensemble", "mtcnn"], ["ensemble", "haar"],
                                                     ["student", "mtcnn"], ["student", "haar"]]
    assert all(float(line.split("frames/s")[0].split()[-1]) > 0 for line in lines)
    assert "faces in 12 of 12 frames" in lines[0]  # MTCNN finds the moving face in every frame
