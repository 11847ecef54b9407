"""The train/test shift check on the bundled sample: faithful files pass, shifted copies warn, the strict flag
stops before training, and a collapsed teacher gets no pseudo-labels."""
import lzma

import numpy as np
import pytest

from fer_kaggle import cli
from fer_kaggle.data import shift
from fer_kaggle.bench.benchmarks import blurred, contrast_stretched
from fer_kaggle.data.competition import NUM_CLASSES
from fer_kaggle.data.inputs import DEMO_TEST, DEMO_TRAIN


@pytest.fixture(scope="module")
def real(demo_train, demo_test):
    return demo_train[0], demo_test[1]


def test_laplacian_is_cv2s(demo_train):
    import cv2
    faces = demo_train[0][:20]
    ours = shift.image_stats(faces)["sharpness"]
    theirs = [np.abs(cv2.Laplacian(f.astype(np.float32), cv2.CV_32F, ksize=1)[1:-1, 1:-1]).mean() for f in faces]
    assert np.allclose(ours, theirs, rtol=1e-5)


def test_faithful_files_get_no_warning(real):
    figures = shift.check_inputs(*real)
    assert shift.input_warning(figures, "train.csv", "test.csv") is None
    assert figures["adversarial_auc"] < shift.WARN_AUC
    assert all(abs(s["effect"]) < shift.WARN_EFFECT for s in figures["stats"].values())


def test_a_blurred_test_copy_is_warned_with_both_figures(real):
    train, test = real
    figures = shift.check_inputs(train, blurred(test, 1.0))
    warning = shift.input_warning(figures, "train.csv", "test.csv")
    sharp = figures["stats"]["sharpness"]
    assert warning.startswith("warning: train.csv and test.csv differ: test images are much blurrier than train")
    assert f"median {sharp['test_median']:.1f} against {sharp['train_median']:.1f}" in warning
    assert f"adversarial AUC {figures['adversarial_auc']:.2f}" in warning and figures["adversarial_auc"] > 0.9


def test_a_blurred_train_file_is_warned(real):
    """The old train file's fault: every train image blurred, the test images sharp."""
    train, test = real
    figures = shift.check_inputs(blurred(train, 1.5), test)
    warning = shift.input_warning(figures, "train.csv", "test.csv")
    assert warning is not None and "test images are much sharper than train" in warning


def test_a_contrast_stretched_test_copy_is_warned(real):
    train, test = real
    figures = shift.check_inputs(train, contrast_stretched(test, 1.5))
    warning = shift.input_warning(figures, "train.csv", "test.csv")
    assert warning is not None and "higher in contrast than train" in warning


def test_two_halves_of_the_train_file_look_alike(real):
    train, _ = real
    order = np.random.default_rng(0).permutation(len(train))
    figures = shift.check_inputs(train[order[::2]], train[order[1::2]])
    assert abs(figures["adversarial_auc"] - 0.5) < 0.06
    assert shift.input_warning(figures, "a", "b") is None


def test_duplicates_are_counted_and_judged_only_on_full_size_files(real):
    train, test = real
    already = shift.duplicate_share(train, test[:360]) * 360  # the samples share a few faces already
    copies = np.concatenate([test[:360], train[:40]])  # and 40 more copies
    figures = shift.check_inputs(train, copies)
    assert figures["duplicate_share"] == pytest.approx((already + 40) / 400)
    assert not any("exact copies" in f for f in shift.input_findings(figures))
    none = dict(figures, duplicate_share=0.0, train_rows=28709)
    assert any("0.0% of test images are exact copies" in f for f in shift.input_findings(none))


def _write(path, header, rows):
    with lzma.open(path, "wt") as f:
        f.write(header + "\n" + "\n".join(rows) + "\n")


@pytest.mark.slow
def test_strict_shift_stops_before_training(tmp_path, demo_test, capsys):
    ids, images = demo_test
    test = tmp_path / "blurred_test.csv.xz"
    _write(test, "id,feature", [f"{i},{' '.join(map(str, face.ravel()))}" for i, face in zip(ids, blurred(images, 1.0))])
    argv = [str(DEMO_TRAIN), str(test), str(tmp_path / "out.csv"), "--workdir", str(tmp_path / "run"),
            "--preset", "demo", "--strict-shift"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "error: --strict-shift:" in err and "blurrier than train" in err and "nothing was trained" in err
    assert err.count("warning:") == 1 and str(test) in err
    assert not (tmp_path / "run" / "round0").exists() and not (tmp_path / "out.csv").exists()


def _probs(labels, confidence=0.95):
    probs = np.full((len(labels), NUM_CLASSES), (1 - confidence) / (NUM_CLASSES - 1))
    probs[np.arange(len(labels)), labels] = confidence
    return probs


def test_a_collapsed_teacher_is_warned_and_gets_no_pseudo_labels():
    rng = np.random.default_rng(0)
    train_labels = rng.integers(0, NUM_CLASSES, 3000)
    held_out = _probs(rng.integers(0, NUM_CLASSES, 1000))
    healthy = shift.fold_shares(_probs(rng.integers(0, NUM_CLASSES, 700)), held_out, train_labels, 0.8)
    assert shift.class_share_warning(0, healthy) is None and shift.pseudo_guard(healthy) is None
    angry = np.where(rng.random(700) < 0.85, 0, rng.integers(0, NUM_CLASSES, 700))  # the blurred-file run's test
    collapsed = shift.fold_shares(_probs(angry), held_out, train_labels, 0.8)
    warning = shift.class_share_warning(2, collapsed)
    assert warning.startswith("warning: fold 2's first-round models predict other classes on test") and "angry" in warning
    assert "angry" in shift.pseudo_guard(collapsed)


def test_the_guard_empties_the_refused_folds_table(tmp_path):
    from fer_kaggle.blend import pseudo
    from fer_kaggle.core.atomic import save_npz
    ids = np.arange(50)
    for fold in range(2):
        save_npz(tmp_path / f"round0/a/fold{fold}/test.npz", ids=ids, probs=_probs(np.zeros(50, int)))
    tables = [pseudo.fold_table(fold, *pseudo.teacher_probs(tmp_path, ["round0/a"], fold), 0.5, refused=fold == 1)
              for fold in range(2)]
    table, _ = pseudo.save_table(tmp_path, tables)
    assert set(table["fold"]) == {0} and len(table) == 50
    table, _ = pseudo.save_table(tmp_path, [pseudo.fold_table(k, *pseudo.teacher_probs(tmp_path, ["round0/a"], k), 0.5,
                                                              True) for k in range(2)])
    assert len(table) == 0


@pytest.mark.slow
def test_the_run_says_why_a_fold_gets_no_pseudo_labels(tmp_path, monkeypatch, capsys):
    """The pipeline's wiring: a fold the guard refuses trains its round-1 units on no test image, and says so."""
    lines = lzma.open(DEMO_TRAIN, "rt").read().splitlines()[:301]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(shift, "pseudo_guard", lambda figures: "collapsed (a test)")
    code = cli.main([str(tmp_path / "train.csv"), str(DEMO_TEST), str(tmp_path / "out.csv"), "--workdir",
                          str(tmp_path / "run"), "--submissions", str(tmp_path / "subs"), "--preset", "demo",
                          "--backbones", "fer_vgg_tiny", "--folds", "2", "--epochs", "1", "--pseudo",
                          "--pseudo-threshold", "0.2"])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    assert "pseudo-labels: fold 0 gets none: collapsed (a test)" in printed.out
    assert "pseudo-labels: fold 1 gets none: collapsed (a test)" in printed.out
    assert "fold 0's students add 0 of 400 test images" in printed.out
    assert "fold 1's students add 0 of 400 test images" in printed.out
    figures = (tmp_path / "run" / "shift.json").read_text()
    assert '"folds"' in figures and '"adversarial_auc"' in figures
