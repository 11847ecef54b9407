"""Ensemble arithmetic on a hand-made run folder."""
import json

import numpy as np
import pandas as pd
import pytest

from fer_kaggle import cli
from fer_kaggle.blend import ensemble
from fer_kaggle.core.atomic import save_npz
from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.blend.submit import read_submission

LABELS = np.array([0, 1, 2, 3, 4, 5, 6, 3])
FOLDS = np.array([0, 1, 0, 1, 0, 1, 0, 1])
TEST_IDS = np.array([10, 11, 12])


def _write_run(workdir, models):
    """models: {name: (oof (8,7), test per fold [(3,7), (3,7)])}"""
    (workdir).mkdir(exist_ok=True)
    (workdir / "folds.json").write_text(json.dumps({"folds": 2, "seed": 0}))
    pd.DataFrame({"row": range(8), "label": LABELS, "fold": FOLDS}).to_csv(workdir / "folds.csv", index=False)
    for name, (oof, tests) in models.items():
        for fold in range(2):
            unit = workdir / name / f"fold{fold}"
            rows = np.flatnonzero(FOLDS == fold)
            save_npz(unit / "oof.npz", rows=rows, probs=oof[rows], probs_plain=oof[rows])
            save_npz(unit / "test.npz", ids=TEST_IDS, probs=tests[fold], probs_plain=tests[fold])
            (unit / "metrics.json").write_text("{}")


def _onehot(labels, p=0.8):
    probs = np.full((len(labels), 7), (1 - p) / 6, dtype=np.float32)
    probs[np.arange(len(labels)), labels] = p
    return probs


def test_oof_is_assembled_from_folds_and_test_is_fold_mean(tmp_path):
    good = _onehot(LABELS)
    tests = [_onehot([1, 2, 3]), _onehot([1, 2, 4], 0.6)]
    _write_run(tmp_path, {"round0/a": (good, tests)})
    models, labels = ensemble.load_models(tmp_path)
    assert labels.tolist() == LABELS.tolist()
    assert np.allclose(models[0].oof, good)
    assert np.allclose(models[0].test, (tests[0] + tests[1]) / 2)


def test_blend_accuracy_weights_and_submission(tmp_path):
    good = _onehot(LABELS)                      # 8/8 right
    wrong = LABELS.copy()
    wrong[:4] = (wrong[:4] + 1) % 7
    half = _onehot(wrong, 0.9)                  # 4/8 right, and confident
    test_good, test_half = _onehot([1, 2, 3]), _onehot([6, 6, 6], 0.9)
    _write_run(tmp_path, {"round0/good": (good, [test_good, test_good]),
                          "round0/half": (half, [test_half, test_half])})
    summary, path = ensemble.run(tmp_path, tmp_path / "subs")
    assert summary["models"]["round0/good"]["oof_acc"] == 1.0
    assert summary["models"]["round0/half"]["oof_acc"] == 0.5
    mean_blend = (good + half) / 2
    assert summary["blends"]["mean"]["oof_acc"] == pytest.approx(ensemble.accuracy(mean_blend, LABELS))
    weights = summary["blends"]["weighted"]["weights"]
    assert sum(weights) == pytest.approx(1) and weights[0] > weights[1]
    kept = summary["blends"][summary["kept"]]
    expected = ensemble.blend(np.stack([test_good, test_half]), kept["weights"]).argmax(1)
    submission = read_submission(path)
    assert submission["id"].tolist() == TEST_IDS.tolist()
    assert submission["label"].tolist() == expected.tolist()
    assert json.loads((tmp_path / "ensemble.json").read_text())["submission"] == str(path)


def test_unfinished_model_is_left_out_and_named(tmp_path, capsys):
    good = _onehot(LABELS)
    _write_run(tmp_path, {"round0/a": (good, [good[:3], good[:3]]), "round0/b": (good, [good[:3], good[:3]])})
    (tmp_path / "round0/b/fold1/metrics.json").unlink()
    models, _ = ensemble.load_models(tmp_path)
    assert [m.name for m in models] == ["round0/a"]
    assert "left out round0/b: fold(s) [1] not finished" in capsys.readouterr().err


def test_no_run_is_a_clear_error(tmp_path):
    with pytest.raises(FerKaggleError, match="no run here"):
        ensemble.load_models(tmp_path)
    assert cli.main(["ensemble", "--workdir", str(tmp_path)]) == 2
