"""Pseudo-label selection and its no-leak rule."""
import numpy as np
import pandas as pd

from fer_kaggle.blend import pseudo
from fer_kaggle.core.atomic import save_npz


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
    teachers = [f"round0/{b}" for b in backbones]
    tables = [pseudo.fold_table(fold, *pseudo.teacher_probs(tmp_path, teachers, fold), threshold=0.9)
              for fold in range(n_folds)]
    for fold, rows in enumerate(tables):
        assert rows["fold"].tolist() == [fold] and rows["id"].tolist() == [ids[fold]] and rows["label"].tolist() == [fold]
    table, key = pseudo.save_table(tmp_path, tables)
    assert pd.read_csv(tmp_path / f"round1/pseudo_labels-{key}.csv")["id"].tolist() == ids[:3].tolist()
    counts = pseudo.counts_per_class(table, n_folds)
    assert counts.loc["angry", "fold0"] == 1 and counts.to_numpy().sum() == 3


def test_teachers_are_averaged(tmp_path):
    ids = np.arange(2)
    sure = np.eye(7, dtype=np.float32)[[3, 3]]
    unsure = np.full((2, 7), 1 / 7, dtype=np.float32)
    save_npz(tmp_path / "round0/a/fold0/test.npz", ids=ids, probs=sure)
    save_npz(tmp_path / "round0/b/fold0/test.npz", ids=ids, probs=unsure)
    _, mean = pseudo.teacher_probs(tmp_path, ["round0/a", "round0/b"], 0)
    assert np.allclose(mean, (sure + unsure) / 2)


def test_ceiling_is_what_a_model_fitted_with_label_smoothing_outputs():
    """Logits fitted to smoothed one-hot targets converge to the ceiling, not to 1."""
    import torch
    from fer_kaggle.training import recipe
    for smoothing in (0.0, 0.1, 0.2):
        logits = torch.zeros(1, 7, requires_grad=True)
        optimizer = torch.optim.SGD([logits], lr=5.0)
        target = torch.as_tensor(recipe.targets([3]))
        for _ in range(2000 if smoothing else 200):
            optimizer.zero_grad()
            recipe.loss(logits, target, smoothing).backward()
            optimizer.step()
        top = float(logits.detach().softmax(-1)[0, 3])
        ceiling = pseudo.probability_ceiling(smoothing)
        if smoothing:
            assert abs(top - ceiling) < 1e-3, (smoothing, top, ceiling)
        else:
            assert top > 0.99 and ceiling == 1.0


def test_threshold_means_the_same_share_under_any_label_smoothing():
    """A teacher at 95% of its ceiling passes --pseudo-threshold 0.9 whatever the smoothing; 0.9 as an
    absolute probability would admit nothing from a teacher trained with smoothing 0.2 (ceiling 0.829)."""
    for smoothing in (0.0, 0.1, 0.2, 0.3):
        ceiling = pseudo.probability_ceiling(smoothing)
        probs = np.full((2, 7), 0.0, dtype=np.float32)
        probs[0, 4] = 0.95 * ceiling   # confident for this smoothing
        probs[1, 4] = 0.85 * ceiling   # not
        probs[:, 0] = 1 - probs[:, 4]
        chosen, labels, _ = pseudo.select(probs, pseudo.absolute_threshold(0.9, smoothing))
        assert chosen.tolist() == [0] and labels.tolist() == [4], smoothing
    assert pseudo.absolute_threshold(0.9, 0.0) == 0.9
    assert abs(pseudo.absolute_threshold(0.9, 0.1) - 0.9 * (0.9 + 0.1 / 7)) < 1e-12
    assert pseudo.select(np.array([[0.829, 0.171, 0, 0, 0, 0, 0]]), 0.9)[0].size == 0


def test_a_students_rows_and_targets_point_at_the_test_images():
    """The rows a student adds are positions in the test arrays; soft targets are the teachers' probabilities."""
    ids = np.array([7, 3, 9])
    probs = np.full((3, 7), 0.01, dtype=np.float32)
    probs[2, 4] = 0.94  # only test id 9 (position 2) is confident
    table = pseudo.fold_table(0, ids, probs, threshold=0.9)
    rows, labels = pseudo.rows_and_targets(table, ids, soft=False)
    assert rows.tolist() == [2] and labels.tolist() == [4]
    rows, soft = pseudo.rows_and_targets(table, ids, soft=True)
    assert soft.shape == (1, 7) and np.allclose(soft[0], probs[2], atol=1e-6)
    empty = pseudo.fold_table(0, ids, probs, threshold=0.9, refused=True)
    assert len(pseudo.rows_and_targets(empty, ids, soft=True)[0]) == 0
    assert pseudo.table_hash(table) != pseudo.table_hash(empty)
