"""Pseudo-labels from the first round's test predictions, chosen per fold without leaks.

Fold k's student trains on the train rows outside fold k plus the test images that
fold k's teachers (one per backbone, each trained without fold k) agree on with a mean
probability of at least `--pseudo-threshold` times the ceiling: the highest probability a
model trained with the run's label smoothing can output (1 - s + s/7; 0.914 at s = 0.1).
So 0.9 means "90% of what a teacher can say" under any label smoothing. No teacher that saw fold k's validation rows is
asked, so the student's OOF accuracy on fold k stays honest.

Fold k's table is made as soon as fold k's teachers are done (the other folds' may still train); its hash
goes into each of fold k's students' config.json, and all folds' tables into
`<workdir>/round1/pseudo_labels-<key>.csv` (fold, id, label, confidence, p_<class> for each class), `key`
a hash of its content. With --pseudo-soft the students learn the teachers' probabilities instead of their argmax.
"""
from pathlib import Path

import numpy as np
import pandas as pd

from fer_kaggle.core import runfolder
from fer_kaggle.core.atomic import save_csv
from fer_kaggle.data.competition import CLASS_NAMES, NUM_CLASSES
from fer_kaggle.core.runfolder import RunFolder, short_hash

PROB_COLUMNS = [f"p_{name}" for name in CLASS_NAMES]


def probability_ceiling(label_smoothing, classes=NUM_CLASSES):
    """The top probability of a model that fits smoothed targets perfectly: its cross-entropy minimum."""
    return 1.0 - label_smoothing + label_smoothing / classes


def absolute_threshold(threshold, label_smoothing):
    """The probability that `--pseudo-threshold` (a share of the ceiling) stands for."""
    return threshold * probability_ceiling(label_smoothing)


def select(test_probs, threshold):
    """Indices, labels and confidences of the test rows whose top probability reaches `threshold`."""
    confidence = test_probs.max(1)
    chosen = np.flatnonzero(confidence >= threshold)
    return chosen, test_probs[chosen].argmax(1), confidence[chosen]


def _teachers_mean(workdir, teachers, fold, file_name, index_name):
    """(the saved `index_name` array, the teachers' mean "probs") from each teacher's fold-`fold` file."""
    index, probs = None, []
    for model in teachers:
        saved = runfolder.load_probs(Path(workdir) / model / runfolder.fold_name(fold) / file_name, runfolder.RERUN)
        index = saved[index_name]
        probs.append(saved["probs"])
    return index, np.mean(probs, axis=0)


def teacher_probs(workdir, teachers, fold):
    """Mean test probabilities of fold `fold`'s round-0 teachers (model folders, e.g. round0/fer_vgg_cpu-1a2b3c4d):
    (ids, probs)."""
    return _teachers_mean(workdir, teachers, fold, runfolder.TEST_FILE, "ids")


def teacher_oof(workdir, teachers, fold):
    """Mean held-out probabilities of fold `fold`'s round-0 teachers on fold `fold`: (rows, probs)."""
    return _teachers_mean(workdir, teachers, fold, runfolder.OOF_FILE, "rows")


COLUMNS = ["fold", "id", "label", "confidence", *PROB_COLUMNS]


def fold_table(fold, ids, probs, threshold, refused=False):
    """Fold `fold`'s pseudo-labels from its teachers' mean test probabilities (teacher_probs: ids, probs):
    the test images they agree on with a mean probability of at least `threshold` (none where `refused`:
    shift.pseudo_guard found its teachers collapsed on test)."""
    if refused:
        return pd.DataFrame(columns=COLUMNS)
    chosen, labels, confidence = select(probs, threshold)
    table = pd.DataFrame({"fold": fold, "id": ids[chosen], "label": labels, "confidence": confidence.round(6)})
    table[PROB_COLUMNS] = probs[chosen].round(6)  # the teachers' probabilities, for --pseudo-soft
    return table


def table_hash(table):
    """What a student's config.json records of the rows it learned from (a changed teacher changes it)."""
    return short_hash(table.to_csv(index=False))


def rows_and_targets(table, test_ids, soft):
    """(positions in the test arrays, targets): the labels, or with --pseudo-soft the probabilities."""
    position = {test_id: p for p, test_id in enumerate(test_ids)}
    rows = np.array([position[i] for i in table["id"]], dtype=np.int64)
    targets = table[PROB_COLUMNS].to_numpy(np.float32) if soft else table["label"].to_numpy(np.int64)
    return rows, targets


def save_table(workdir, fold_tables):
    """Every fold's table in one file, round1/pseudo_labels-<key>.csv (the report reads it); (table, key)."""
    tables = [t for t in fold_tables if len(t)]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=COLUMNS)
    key = table_hash(table)
    save_csv(RunFolder(workdir).pseudo_table_path(key), table)
    return table, key


def counts_per_class(table, n_folds):
    """Images added per class (rows) and fold (columns), class names as the index."""
    counts = pd.crosstab(pd.Categorical(table["label"], categories=range(len(CLASS_NAMES))),
                         pd.Categorical(table["fold"], categories=range(n_folds)), dropna=False)
    counts.index = list(CLASS_NAMES)
    counts.columns = [f"fold{k}" for k in range(n_folds)]
    return counts
