"""Does the test data look like the train data? Checked before training, and after round 0.

Before training (seconds): per-image brightness (mean pixel), contrast (pixel standard deviation) and
sharpness (mean |Laplacian|), the share of test images that are exact copies of train images, and
adversarial validation: a small classifier's cross-validated ROC AUC at telling a train image from a
test image (0.5: it cannot; 1.0: every image gives its file away). A blurred train file, a contrast-
stretched test file, or faces cropped differently make the AUC climb long before anything else shows.

After round 0, per fold: the class shares that fold k's teachers predict on the test images against
those they predict on their own held-out train rows. A collapsed teacher (most test faces one class)
is flagged, and pseudo-labelling gives that fold no test images (`pseudo_guard`).

Thresholds (BENCHMARKS.md has the measurements behind them): see WARN_* below.
"""
import time

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from fer_kaggle.data.competition import CLASS_NAMES, NUM_CLASSES
from fer_kaggle.data.folds import image_digests

STATS = {"brightness": "brightness (mean pixel)", "contrast": "contrast (pixel std)",
         "sharpness": "sharpness (mean |Laplacian|)"}
WARN_AUC = 0.70         # the real files score about 0.5, a blurred test copy near 1 (BENCHMARKS.md)
WARN_EFFECT = 0.5       # |median difference| in train standard deviations of the statistic
DUPLICATES_EXPECTED = 0.08  # share of FER2013's test images that are exact copies of train images
DUPLICATES_RANGE = (0.03, 0.20)  # outside: warned, on full-size files only (a sample shares fewer)
FULL_SIZE_TRAIN = 20_000
WARN_TVD = 0.15         # class-share distance, test vs held-out predictions of one fold's teachers
GUARD_TVD = 0.25        # the same among the confident predictions: above it, the fold gets no pseudo-labels
ADVERSARIAL_ROWS = 4000  # per side: enough for an AUC within about 0.01, in about a second


def image_stats(images, chunk=4096):
    """{stat: float32 (N,)}: brightness, contrast and sharpness of uint8 faces (N, H, W)."""
    out = {name: np.empty(len(images), np.float32) for name in STATS}
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].astype(np.float32)
        laplacian = (x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:]
                     - 4 * x[:, 1:-1, 1:-1])  # cv2.Laplacian's 3x3 kernel, on the inside pixels
        rows = slice(start, start + len(x))
        out["brightness"][rows] = x.mean((1, 2))
        out["contrast"][rows] = x.std((1, 2))
        out["sharpness"][rows] = np.abs(laplacian).mean((1, 2))
    return out


def duplicate_share(train_images, test_images):
    """Share of test images whose pixels equal some train image's, byte for byte."""
    seen = set(image_digests(train_images))
    copies = sum(digest in seen for digest in image_digests(test_images))
    return copies / max(1, len(test_images))


def _features(images, stats):
    """Per image: its three statistics and an 8 x 8 grid of mean pixels (the face's layout)."""
    n, h, w = images.shape
    grid = images[:, : h // 8 * 8, : w // 8 * 8].astype(np.float32)
    grid = grid.reshape(n, 8, h // 8, 8, w // 8).mean((2, 4)).reshape(n, 64)
    return np.column_stack([stats[name] for name in STATS] + [grid])


def adversarial_auc(train_images, test_images, train_stats, test_stats, seed=2013):
    """Cross-validated ROC AUC of a gradient-boosted classifier telling train rows (0) from test rows (1)."""
    rng = np.random.default_rng(seed)
    count = min(len(train_images), len(test_images), ADVERSARIAL_ROWS)
    if count < 20:
        return float("nan")
    pick_train = rng.choice(len(train_images), count, replace=False)
    pick_test = rng.choice(len(test_images), count, replace=False)
    features = np.concatenate([_features(train_images[pick_train], {k: v[pick_train] for k, v in train_stats.items()}),
                               _features(test_images[pick_test], {k: v[pick_test] for k, v in test_stats.items()})])
    is_test = np.repeat([0, 1], count)
    classifier = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, early_stopping=False,
                                                random_state=seed)
    folds = StratifiedKFold(3, shuffle=True, random_state=seed)
    scores = cross_val_predict(classifier, features, is_test, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(is_test, scores))


def _histogram(train_values, test_values, bins=30):
    edges = np.histogram_bin_edges(np.concatenate([train_values, test_values]), bins=bins)
    return {"edges": edges.round(4).tolist(),
            "train": np.histogram(train_values, edges)[0].tolist(), "test": np.histogram(test_values, edges)[0].tolist()}


def check_inputs(train_images, test_images):
    """The before-training figures: {stats: {name: medians, effect}, duplicates, auc, histograms, seconds}."""
    started = time.perf_counter()
    train_stats, test_stats = image_stats(train_images), image_stats(test_images)
    stats = {}
    for name in STATS:
        spread = float(train_stats[name].std()) or 1.0
        train_median, test_median = float(np.median(train_stats[name])), float(np.median(test_stats[name]))
        stats[name] = {"train_median": round(train_median, 3), "test_median": round(test_median, 3),
                       "effect": round((test_median - train_median) / spread, 3)}
    return {
        "stats": stats,
        "duplicate_share": round(duplicate_share(train_images, test_images), 4),
        "train_rows": len(train_images), "test_rows": len(test_images),
        "adversarial_auc": round(adversarial_auc(train_images, test_images, train_stats, test_stats), 4),
        "histograms": {name: _histogram(train_stats[name], test_stats[name]) for name in STATS},
        "seconds": round(time.perf_counter() - started, 2),
    }


_WORDS = {"brightness": ("brighter", "darker"), "contrast": ("higher in contrast", "lower in contrast"),
          "sharpness": ("sharper", "blurrier")}


def input_findings(figures):
    """What differs materially, in words (empty: nothing); each names both figures."""
    findings = []
    for name, stat in figures["stats"].items():
        if abs(stat["effect"]) >= WARN_EFFECT:
            much = "much " if abs(stat["effect"]) >= 2 * WARN_EFFECT else ""
            word = _WORDS[name][0 if stat["effect"] > 0 else 1]
            findings.append(f"test images are {much}{word} than train: {STATS[name]} median "
                            f"{stat['test_median']:.1f} against {stat['train_median']:.1f}")
    share, low_high = figures["duplicate_share"], DUPLICATES_RANGE
    if figures["train_rows"] >= FULL_SIZE_TRAIN and not low_high[0] <= share <= low_high[1]:
        findings.append(f"{100 * share:.1f}% of test images are exact copies of train images (FER2013's own "
                        f"files share about {100 * DUPLICATES_EXPECTED:.0f}%): the files may not come from the "
                        f"same release or the same preprocessing")
    auc = figures["adversarial_auc"]
    if auc >= WARN_AUC and not findings:
        findings.append("a classifier tells test images from train images")
    return findings


def describe_inputs(figures):
    """One line of the figures, whatever they are."""
    stats = ", ".join(f"{name} {s['train_median']:.1f} / {s['test_median']:.1f}" for name, s in figures["stats"].items())
    return (f"shift check (train / test medians): {stats}; {100 * figures['duplicate_share']:.1f}% of test images "
            f"are copies of train images; adversarial AUC {figures['adversarial_auc']:.3f} (0.5: no shift) "
            f"({figures['seconds']:.1f} s)")


def input_warning(figures, train_name, test_name):
    """The `warning:` line when train and test differ materially, else None."""
    findings = input_findings(figures)
    if not findings and figures["adversarial_auc"] < WARN_AUC:
        return None
    return (f"warning: {train_name} and {test_name} differ: " + "; ".join(findings)
            + f"; adversarial AUC {figures['adversarial_auc']:.2f} (0.5: no shift). Models trained on one "
            f"predict the other badly: check how each file was made")


# ---------------------------------------------------------------- after round 0

def shares(probs, rows=None):
    """Class shares of the argmax of `probs` (over `rows` if given)."""
    picked = probs if rows is None else probs[rows]
    if len(picked) == 0:
        return np.zeros(NUM_CLASSES)
    return np.bincount(picked.argmax(1), minlength=NUM_CLASSES) / len(picked)


def total_variation(p, q):
    """Half the L1 distance of two distributions: the share of mass that must move (0 to 1)."""
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


def fold_shares(test_probs, oof_probs, train_labels, threshold):
    """Fold k's teachers: predicted class shares on test and on their held-out rows, all and confident."""
    confident_test = np.flatnonzero(test_probs.max(1) >= threshold)
    confident_oof = np.flatnonzero(oof_probs.max(1) >= threshold)
    figures = {"test": shares(test_probs), "held_out": shares(oof_probs),
               "train_labels": np.bincount(train_labels, minlength=NUM_CLASSES) / len(train_labels),
               "confident_test": shares(test_probs, confident_test),
               "confident_held_out": shares(oof_probs, confident_oof),
               "confident_test_rows": int(len(confident_test))}
    figures["tvd"] = total_variation(figures["test"], figures["held_out"])
    figures["confident_tvd"] = total_variation(figures["confident_test"], figures["confident_held_out"])
    return figures


def _dominant(figures, prefix=""):
    """The class most over-predicted on test, with its shares (prefix "confident_": among confident ones)."""
    test, held_out = figures[f"{prefix}test"], figures[f"{prefix}held_out"]
    top = int(np.argmax(test - held_out))
    which = "confident " if prefix else ""
    return (f"{CLASS_NAMES[top]}: {100 * test[top]:.0f}% of {which}test predictions against "
            f"{100 * held_out[top]:.0f}% of {which}held-out ones and {100 * figures['train_labels'][top]:.0f}% "
            f"of train labels")


def class_share_warning(fold, figures):
    """The `warning:` line when fold k's teachers predict test classes far from their held-out ones."""
    if figures["tvd"] < WARN_TVD:
        return None
    return (f"warning: fold {fold}'s first-round models predict other classes on test than on held-out train "
            f"rows ({_dominant(figures)}; distance {figures['tvd']:.2f}, {WARN_TVD} warns): the test images "
            f"differ from the train images")


def pseudo_guard(figures):
    """Why fold k gets no pseudo-labels (its confident test predictions collapsed onto a class), or None."""
    if figures["confident_test_rows"] == 0 or figures["confident_tvd"] < GUARD_TVD:
        return None
    return (f"its confident test predictions are dominated by classes far beyond their share among the same "
            f"models' confident held-out predictions ({_dominant(figures, 'confident_')}; "
            f"distance {figures['confident_tvd']:.2f}, {GUARD_TVD} refuses)")


def to_json(figures):
    return {key: value.round(4).tolist() if isinstance(value, np.ndarray) else value for key, value in figures.items()}
