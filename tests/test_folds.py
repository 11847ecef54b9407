"""Fold assignment: stratified, duplicates grouped, deterministic, tied to its train file."""
import numpy as np
import pandas as pd
import pytest

from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.data.folds import duplicate_groups, make_or_load_folds


def test_duplicate_images_share_a_group(demo_train):
    images, _ = demo_train
    with_copies = np.concatenate([images[:50], images[[3, 3, 7]]])
    groups = duplicate_groups(with_copies)
    assert groups[50] == groups[51] == groups[3]
    assert groups[52] == groups[7]
    assert len(np.unique(groups)) == len(np.unique(with_copies.reshape(53, -1), axis=0))


def test_folds_are_stratified_grouped_and_saved(tmp_path, demo_train):
    images, labels = demo_train
    images = np.concatenate([images, images[:40]])  # 40 exact copies, whatever their labels
    labels = np.concatenate([labels, labels[:40]])
    folds, meta = make_or_load_folds(tmp_path, images, labels, "abc", n_folds=5, seed=1)
    assert set(folds) == set(range(5))
    assert (folds[:40] == folds[-40:]).all(), "a copy landed in another fold than its original"
    assert meta["duplicate_groups"] >= 40
    # every class is spread evenly: each fold holds its share of each class within 2 images
    for label in range(7):
        per_fold = np.bincount(folds[labels == label], minlength=5)
        assert per_fold.max() - per_fold.min() <= 2 + 40 // 5
    saved = pd.read_csv(tmp_path / "folds.csv")
    assert (saved["fold"].to_numpy() == folds).all() and (saved["label"].to_numpy() == labels).all()


def test_folds_are_deterministic_and_reused(tmp_path, demo_train):
    images, labels = demo_train
    first, _ = make_or_load_folds(tmp_path / "a", images, labels, "abc", 5, seed=7)
    again, _ = make_or_load_folds(tmp_path / "b", images, labels, "abc", 5, seed=7)
    other, _ = make_or_load_folds(tmp_path / "c", images, labels, "abc", 5, seed=8)
    reused, _ = make_or_load_folds(tmp_path / "a", images, labels, "abc", 5, seed=7)
    assert (first == again).all() and (first == reused).all()
    assert (first != other).any()


def test_another_train_file_is_refused(tmp_path, demo_train):
    images, labels = demo_train
    make_or_load_folds(tmp_path, images, labels, "fingerprint-one", 5, seed=7)
    with pytest.raises(FerKaggleError, match="different train file"):
        make_or_load_folds(tmp_path, images, labels, "fingerprint-two", 5, seed=7)
    with pytest.raises(FerKaggleError, match="--folds 5 --seed 7"):
        make_or_load_folds(tmp_path, images, labels, "fingerprint-one", 3, seed=7)
