"""The final held-out test accuracy, for inputs that carry test labels.

fer2013.csv and icml_face_data.csv hold the PublicTest and PrivateTest labels; an image test
folder of class folders holds its own. Those labels are saved apart (`heldout_labels.npz`) and
read here only, after the submission is written, to print each split's accuracy once and to write
`heldout.json` for the report. No choice (epochs, weights, blend, pseudo-labels) ever reads them.
"""

import numpy as np

from fer_kaggle.core.atomic import load_npz, read_json, save_npz, write_json
from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.core.runfolder import RERUN, RunFolder
from fer_kaggle.blend.submit import read_submission

NOTE = "labels from the input file; computed once after the submission was written, never used for a choice"


def save_labels(workdir, ids, labels, usage):
    save_npz(RunFolder(workdir).heldout_labels, ids=ids, labels=labels, usage=usage)


def score(workdir, submission):
    """Each held-out split's accuracy of `submission`; writes heldout.json. None without labels."""
    path = RunFolder(workdir).heldout_labels
    if not path.exists():
        return None
    saved = load_npz(path, ("ids", "labels", "usage"), remedy=RERUN)
    ids, labels, usage = saved["ids"], saved["labels"], saved["usage"]
    predicted = read_submission(submission)
    if len(predicted) != len(ids) or not np.array_equal(predicted["id"].astype(str), ids.astype(str)):
        raise FerKaggleError(f"{submission}: its ids are not those of the held-out labels in {path}")
    correct = predicted["label"].to_numpy() == labels
    names = list(dict.fromkeys(usage.tolist()))  # in file order: PublicTest, then PrivateTest
    splits = [{"split": name, "accuracy": float(correct[usage == name].mean()), "images": int((usage == name).sum())}
              for name in names]
    if len(splits) > 1:
        splits.append({"split": "all", "accuracy": float(correct.mean()), "images": len(correct)})
    scores = {"submission": str(submission), "note": NOTE, "splits": splits}
    write_json(RunFolder(workdir).heldout_scores, scores)
    return scores


def load_scores(workdir):
    path = RunFolder(workdir).heldout_scores
    return read_json(path, remedy="run python -m fer_kaggle.ensemble to score the submission again") \
        if path.exists() else None


def describe(scores):
    """One line: 'held-out test accuracy: PublicTest 0.7012 (3589 images), ...'."""
    parts = [f"{s['split']} {s['accuracy']:.4f} ({s['images']} images)" for s in scores["splits"]]
    return f"held-out test accuracy ({NOTE}): " + ", ".join(parts)
