"""Shared fixtures: real FER2013 rows from the bundled demo sample."""
from pathlib import Path

import numpy as np
import pytest

from fer_kaggle.data import read_test, read_train

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fer_kaggle" / "demo_data"


@pytest.fixture(scope="session")
def demo_train():
    """(images, labels) of the bundled 2,400-row train sample."""
    return read_train(DEMO / "train.csv.xz")


@pytest.fixture(scope="session")
def demo_test():
    """(ids, images) of the bundled 400-row test sample."""
    return read_test(DEMO / "test.csv.xz")


@pytest.fixture(scope="session")
def small_unit_data(demo_train, demo_test):
    """A unit's arrays, small enough to train in seconds on a CPU."""
    from fer_kaggle.train import UnitData
    images, labels = demo_train
    ids, test_images = demo_test
    valid = np.arange(300, 400)
    return UnitData(images[:300], labels[:300], valid, images[valid], labels[valid], ids[:60], test_images[:60])
