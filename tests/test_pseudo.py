"""Pseudo-label selection and its no-leak rule."""
import numpy as np

from fer_kaggle import pseudo
from fer_kaggle.atomic import save_npz


def test_select_keeps_confident_rows():
    probs = np.array([[0.95, 0.05, 0, 0, 0, 0, 0],
                      [0.5, 0.5, 0, 0, 0, 0, 0],
                      [0, 0, 0, 0, 0, 0.9, 0.1]], dtype=np.float32)
    chosen, labels, confidence = pseudo.select(probs, 0.9)
    assert chosen.tolist() == [0, 2] and labels.tolist() == [0, 5]
    assert np.allclose(confidence, [0.95, 0.9])


def test_each_fold_uses_only_its_own_teachers(tmp_path):
    """Fold k's pseudo-labels come from the fold-k teachers alone, never another fold's."""
    ids = np.arange(100, 104)
    n_folds, backbones = 3, ["a", "b"]
    for fold in range(n_folds):
        for backbone in backbones:
            probs = np.full((4, 7), 0.01, dtype=np.float32)
            probs[fold, fold] = 0.94  # each fold's teachers are sure of one test row only: row `fold`
            save_npz(tmp_path / f"round0/{backbone}/fold{fold}/test.npz", ids=ids, probs=probs)
    table = pseudo.pseudo_labels(tmp_path, backbones, n_folds, threshold=0.9)
    for fold in range(n_folds):
        rows = table[table["fold"] == fold]
        assert rows["id"].tolist() == [ids[fold]] and rows["label"].tolist() == [fold]
    assert (tmp_path / "round1/pseudo_labels.csv").exists()
    counts = pseudo.counts_per_class(table, n_folds)
    assert counts.loc["angry", "fold0"] == 1 and counts.to_numpy().sum() == 3


def test_teachers_are_averaged(tmp_path):
    ids = np.arange(2)
    sure = np.eye(7, dtype=np.float32)[[3, 3]]
    unsure = np.full((2, 7), 1 / 7, dtype=np.float32)
    save_npz(tmp_path / "round0/a/fold0/test.npz", ids=ids, probs=sure)
    save_npz(tmp_path / "round0/b/fold0/test.npz", ids=ids, probs=unsure)
    _, mean = pseudo.teacher_probs(tmp_path, ["a", "b"], 0)
    assert np.allclose(mean, (sure + unsure) / 2)
