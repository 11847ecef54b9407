"""Image form: FER2013 as folders of image files (the popular Kaggle image version).

    train/<class>/*.png|jpg      class folders named angry, disgust(ed), fear(ful), happy, sad,
                                 surprise(d), neutral (any case) or 0-6, never mapped alphabetically
    test/*.png|jpg               flat; or test/<class>/... which gives a final held-out accuracy

Images that are not 48x48 8-bit grayscale are converted (colour to gray, 16-bit to 8-bit,
INTER_AREA resize) and the conversion is reported. Hidden files and files that are not images
are skipped and counted. A test image's id is its path relative to the test folder.
"""
import concurrent.futures
import hashlib
import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from fer_kaggle.data.competition import CLASS_NAMES, IMAGE_SIZE
from fer_kaggle.core.errors import FerKaggleError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_SPELLINGS = {"disgust": ("disgusted",), "fear": ("fearful",), "surprise": ("surprised",)}
CLASS_FOLDERS = {
    spelling: label
    for label, name in enumerate(CLASS_NAMES)
    for spelling in (name, str(label), *_SPELLINGS.get(name, ()))
}


def class_of(folder_name):
    """The 0-6 label a class folder's name stands for, or None."""
    return CLASS_FOLDERS.get(folder_name.strip().lower())


def _accepted():
    return ", ".join(sorted(CLASS_FOLDERS, key=lambda name: (CLASS_FOLDERS[name], name)))


def _visible(path, root):
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def image_files(folder):
    """(sorted image paths under `folder`, paths skipped as not images) — hidden files ignored."""
    images, skipped = [], []
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file() or not _visible(path, folder):
            continue
        (images if path.suffix.lower() in IMAGE_SUFFIXES else skipped).append(path)
    return images, skipped


def fingerprint(folder):
    """sha256 over every image's relative path and bytes: the same folder content, the same value."""
    digest = hashlib.sha256()
    for path in image_files(folder)[0]:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def read_image(path):
    """One image as 48x48 uint8 grayscale, and what had to be converted (a tuple of short notes)."""
    image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FerKaggleError(f"{path}: not a readable image (corrupt, or not really a {path.suffix} file)")
    notes = []
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257).round().astype(np.uint8)
        notes.append("16-bit to 8-bit")
    elif image.dtype != np.uint8:
        raise FerKaggleError(f"{path}: {image.dtype} pixels; expected 8- or 16-bit integers")
    if image.ndim == 3:
        codes = {1: None, 3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}
        code = codes.get(image.shape[2], -1)
        if code == -1:
            raise FerKaggleError(f"{path}: {image.shape[2]} channels; expected gray, colour or colour+alpha")
        image = image[:, :, 0] if code is None else cv2.cvtColor(image, code)
        if code is not None:
            notes.append("colour to gray")
    if image.shape != (IMAGE_SIZE, IMAGE_SIZE):
        notes.append(f"resized from {image.shape[1]}x{image.shape[0]}")
        image = cv2.resize(image, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    return image, tuple(notes)


def _read_images(paths, what):
    """Decode `paths` on a few threads (cv2 releases the GIL); the first bad file, in order, is raised."""
    if not paths:
        return np.empty((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8), Counter()
    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(tqdm(pool.map(read_image, paths), total=len(paths), desc=f"reading {what}",
                            unit="img", leave=False, disable=None))
    conversions = Counter(note for _, notes in results for note in notes)
    return np.stack([image for image, _ in results]), conversions


def describe(folder, count, conversions, skipped):
    """One line for the log: how many images, what was converted, what was skipped."""
    parts = [f"{folder}: {count} images"]
    if conversions:
        parts.append("converted to 48x48 grayscale: " + ", ".join(f"{n} {note}" for note, n in
                                                                  sorted(conversions.items())))
    if skipped:
        shown = ", ".join(p.name for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        parts.append(f"skipped {len(skipped)} files that are not images ({shown})")
    return "; ".join(parts)


def _class_folders(folder, role):
    """{subfolder: label} of `folder`'s class folders; an unknown name is an error that lists the accepted."""
    classes = {}
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = class_of(sub.name)
        if label is None:
            raise FerKaggleError(f"{sub}: '{sub.name}' is not a class name; {role} class folders are named "
                                 f"{_accepted()} (any case)")
        classes[sub] = label
    return classes


def _loose_images(folder, classes):
    images, _ = image_files(folder)
    return [p for p in images if not any(p.is_relative_to(sub) for sub in classes)]


def read_train_folder(folder):
    """(images, labels, log line) of a train folder of class folders."""
    folder = Path(folder)
    classes = _class_folders(folder, "train")
    loose = _loose_images(folder, classes)
    if loose:
        raise FerKaggleError(f"{loose[0]}: train images must sit in class folders (angry/, happy/, ...), "
                             f"not directly in {folder}")
    paths, labels, skipped = [], [], []
    for sub, label in classes.items():
        found, not_images = image_files(sub)
        paths += found
        labels += [label] * len(found)
        skipped += not_images
    if not paths:
        raise FerKaggleError(f"{folder}: no images in class folders ({_accepted()}); "
                             f"expected e.g. {folder}/happy/0001.png")
    images, conversions = _read_images(paths, "train images")
    return images, np.asarray(labels, dtype=np.int64), describe(folder, len(paths), conversions, skipped)


def read_test_folder(folder):
    """(ids, images, labels or None, log line) of a test folder, flat or of class folders.

    ids are the paths relative to `folder` ('happy/0001.png' or '0001.png').
    """
    folder = Path(folder)
    classes = _class_folders(folder, "test") if _has_class_folders(folder) else {}
    loose = _loose_images(folder, classes) if classes else []
    if loose:
        raise FerKaggleError(f"{loose[0]}: the test folder mixes images with class folders; put every image "
                             f"in a class folder, or none")
    paths, skipped = image_files(folder)
    if not paths:
        raise FerKaggleError(f"{folder}: no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    images, conversions = _read_images(paths, "test images")
    ids = np.asarray([p.relative_to(folder).as_posix() for p in paths])
    labels = None
    if classes:
        labels = np.asarray([classes[next(sub for sub in classes if p.is_relative_to(sub))] for p in paths],
                            dtype=np.int64)
    return ids, images, labels, describe(folder, len(paths), conversions, skipped)


def _has_class_folders(folder):
    """A test folder is labelled when any of its subfolders is named like a class."""
    return any(class_of(p.name) is not None for p in Path(folder).iterdir() if p.is_dir())


def find_split_folders(root):
    """(train, test) subfolders of a data folder, matched case-insensitively, or None."""
    subs = {p.name.lower(): p for p in Path(root).iterdir() if p.is_dir()}
    if "train" in subs and "test" in subs:
        return subs["train"], subs["test"]
    return None
