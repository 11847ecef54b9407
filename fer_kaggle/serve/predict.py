"""The expressions of the faces in your own photos, with a finished run's ensemble.

    python -m fer_kaggle.predict PATH... [--run folds/] [--out faces.csv] [--annotate DIR]
                                 [--no-detect] [--min-face PX] [--batch-size N]

PATHs are image files or folders (searched recursively for .jpg .jpeg .png .bmp .webp .tif .tiff
.pgm; hidden files skipped). Each photo is turned to grayscale, its faces found with OpenCV's Haar
cascade, each face cut out the way FER2013's faces were framed, shrunk to 48x48 and predicted.

Without --out, one line per face is printed; --out writes a CSV with one row per face: file, face
(its number in the file, left to right), x, y, w, h (the square the model read, in the pixels of
the photo turned upright by its EXIF orientation; it can reach past the photo's edge, where black
is used as in FER2013's own crops), the seven class
probabilities, label. --annotate DIR writes copies of the photos with the boxes and "label 0.87".
A photo without a face is listed, not an error; a missing path or an unreadable image stops
everything with exit status 2 before anything is written.
"""
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fer_kaggle.core.atomic import atomic_path, save_csv
from fer_kaggle.data.competition import CLASS_NAMES, IMAGE_SIZE
from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.data.folders import IMAGE_SUFFIXES, image_files
from fer_kaggle.serve.inference import load_ensemble


# OpenCV's own frontal-face Haar cascade, from the opencv-python(-headless) wheel: nothing is
# downloaded. OpenCV 5's wheels no longer ship the cascades (cv2.data is gone), which is why
# setup.cfg pins opencv-python-headless<5.
CASCADE = "haarcascade_frontalface_default.xml"

# How much wider than the Haar box the cut-out square is, on each side, as a fraction of the box.
# FER2013's faces are tight crops (brow to chin), made by a detector in 2013. Measured on FER2013
# itself: 800 rows of the bundled train sample, upscaled to 192 px and padded to 448 px (reflected,
# replicated, gray or noise background), through detect_faces' settings: in the 92-322 faces found per
# background, the 48x48 frame is the Haar box widened by a median 1.03-1.04 (quartiles 0.94-1.12),
# centred within 1% of the box. So the Haar box, 2% wider on each side, is FER2013's framing; the
# 20-30% margins common for other face datasets would show the model more hair and background
# than it ever saw in training.
MARGIN = 0.02
# Larger photos are shrunk to this side for detection only (Haar on a 12 MP photo takes seconds); the
# cascade's smallest window is 24 px there, so a face under 24 * side / 1280 px (75 px in a 4000 px
# photo) is missed. Faces are cut out of the full-size photo.
DETECT_MAX_SIDE = 1280


def cascade():
    """The Haar face detector from the installed OpenCV."""
    if not hasattr(cv2, "data"):
        raise FerKaggleError(f"this OpenCV ({cv2.__version__}) has no bundled Haar cascades (OpenCV 5 dropped "
                             f"them); install opencv-python-headless<5")
    detector = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / CASCADE))
    if detector.empty():
        raise FerKaggleError(f"{Path(cv2.data.haarcascades) / CASCADE}: OpenCV could not load its face cascade")
    return detector


@dataclass
class Photo:
    path: Path                    # as found: the user's path, or the user's folder / relative path
    name: Path                    # relative name for --annotate: the file's name, or its path in the folder
    boxes: list = field(default_factory=list)   # (x, y, w, h) squares the model reads
    crops: list = field(default_factory=list)   # 48x48 uint8, one per box


def find_images(paths, skip=None):
    """[(path, relative name)] of the image files given and under the folders given, in order."""
    found = []
    for path in map(Path, paths):
        if path.is_file():
            found.append((path, Path(path.name)))
        elif path.is_dir():
            found += [(file, file.relative_to(path)) for file in image_files(path)[0]
                      if skip is None or not file.resolve().is_relative_to(skip)]
        else:
            raise FerKaggleError(f"{path}: no such file or folder")
    if not found:
        raise FerKaggleError(f"no images in {', '.join(map(str, paths))} (looked for {' '.join(IMAGE_SUFFIXES)})")
    return found


def read_photo(path):
    """The photo as 8-bit BGR, turned upright by its EXIF orientation (cv2.IMREAD_COLOR does both)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise FerKaggleError(f"{path}: cannot be read ({exc.strerror})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise FerKaggleError(f"{path}: not a readable image (empty, corrupt, or not really a "
                             f"{path.suffix or 'image'} file)")
    return image


def detect_faces(gray, detector, min_face):
    """Haar boxes (x, y, w, h) on the histogram-equalised photo, in the photo's pixels, left to right."""
    scale = min(1.0, DETECT_MAX_SIDE / max(gray.shape))
    small = gray if scale == 1.0 else cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    # equalised for detection only: the model reads the photo's own pixels, as FER2013's were
    found = detector.detectMultiScale(cv2.equalizeHist(small), scaleFactor=1.1, minNeighbors=5,
                                      minSize=(max(24, round(min_face * scale)),) * 2)
    boxes = [tuple(round(float(v) / scale) for v in box) for box in found]
    return sorted(boxes)


def face_square(box):
    """The square the model reads for a Haar box: the box widened by MARGIN on each side."""
    x, y, w, h = box
    side = round(max(w, h) * (1 + 2 * MARGIN))
    return (round(x + w / 2 - side / 2), round(y + h / 2 - side / 2), side, side)


def crop(gray, square):
    """The 48x48 face in `square` (black beyond the photo's edge), shrunk with INTER_AREA as in training."""
    x, y, w, h = square
    height, width = gray.shape
    pad = max(0, -x, -y, x + w - width, y + h - height)
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    face = gray[y + pad:y + pad + h, x + pad:x + pad + w]
    return cv2.resize(face, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)


def find_faces(found, detect=True, min_face=40):
    """A Photo per file with its squares and 48x48 crops; reads every file (an unreadable one stops all)."""
    detector = cascade() if detect else None
    photos = []
    for path, name in tqdm(found, desc="finding faces", unit="photo", leave=False, disable=None):
        gray = cv2.cvtColor(read_photo(path), cv2.COLOR_BGR2GRAY)
        photo = Photo(path, name)
        if detect:
            photo.boxes = [face_square(box) for box in detect_faces(gray, detector, min_face)]
        else:  # an already-cropped face: the whole image, squeezed to 48x48
            photo.boxes = [(0, 0, gray.shape[1], gray.shape[0])]
        photo.crops = [crop(gray, box) for box in photo.boxes]
        photos.append(photo)
    return photos


def predict_crops(module, crops, batch_size):
    """(N, 7) probabilities of (N, 48, 48) uint8 faces, batch by batch."""
    probs = [np.empty((0, len(CLASS_NAMES)), np.float32)]
    with torch.inference_mode():
        for start in range(0, len(crops), batch_size):
            probs.append(module(torch.from_numpy(crops[start:start + batch_size][:, None])).numpy())
    return np.concatenate(probs)


def faces_table(photos, probs):
    """One row per face: file, face, x, y, w, h, the 7 probabilities, label."""
    rows = [(str(photo.path), index, *box) for photo in photos for index, box in enumerate(photo.boxes)]
    table = pd.DataFrame(rows, columns=["file", "face", "x", "y", "w", "h"])
    for k, name in enumerate(CLASS_NAMES):
        table[name] = probs[:, k].round(6)  # the model's float32 holds about 7 digits
    table["label"] = [CLASS_NAMES[k] for k in probs.argmax(1)] if len(probs) else []
    return table


def draw(image, boxes, probs):
    """Boxes and "label 0.87" on a copy of the BGR photo, sized to the photo."""
    image = image.copy()
    thick = max(2, round(max(image.shape[:2]) / 300))
    for (x, y, w, h), p in zip(boxes, probs):
        text = f"{CLASS_NAMES[p.argmax()]} {p.max():.2f}"
        cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), (0, 255, 0), thick)
        scale = max(0.5, w / 220)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        left, bottom = max(0, x), (y - thick if y - th - base - thick > 0 else y + h + th + base)
        cv2.rectangle(image, (left, bottom - th - base), (left + tw, bottom), (0, 255, 0), cv2.FILLED)
        cv2.putText(image, text, (left, bottom - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick,
                    cv2.LINE_AA)
    return image


def write_image(path, image):
    """Encode by the file's extension and write atomically (a .pgm is written gray: PGM has no colour)."""
    if path.suffix.lower() == ".pgm":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    ok, data = cv2.imencode(path.suffix, image)
    if not ok:
        raise FerKaggleError(f"{path}: OpenCV cannot write {path.suffix} images")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def annotate(photos, probs, folder):
    """Annotated copies under `folder`, by each photo's relative name; returns how many were written."""
    names = {}
    for photo in photos:
        if photo.name in names:
            raise FerKaggleError(f"{photo.path} and {names[photo.name]} would both be annotated as "
                                 f"{Path(folder) / photo.name}; give them in separate runs")
        names[photo.name] = photo.path
    start = 0
    for photo in photos:
        count = len(photo.boxes)
        write_image(Path(folder) / photo.name, draw(read_photo(photo.path), photo.boxes, probs[start:start + count]))
        start += count
    return len(photos)


def face_line(row):
    """`photo.jpg face 0 (x 10, y 20, 96x96): happy 0.87, neutral 0.06`"""
    ranked = sorted(CLASS_NAMES, key=lambda name: -row[name])[:2]
    return (f"{row['file']} face {row['face']} (x {row['x']}, y {row['y']}, {row['w']}x{row['h']}): "
            + ", ".join(f"{name} {row[name]:.2f}" for name in ranked))


def predict(paths, run="folds", out=None, annotate_dir=None, detect=True, min_face=40, batch_size=256):
    """Find, predict, write; returns (faces table, paths of the images without a face, number of images)."""
    if out is not None and not Path(out).parent.is_dir():
        raise FerKaggleError(f"{out}: the folder {Path(out).parent} does not exist; create it first")
    if batch_size < 1 or min_face < 1:
        raise FerKaggleError("--batch-size and --min-face must be at least 1")
    module = load_ensemble(run)
    skip = Path(annotate_dir).resolve() if annotate_dir is not None else None
    photos = find_faces(find_images(paths, skip), detect, min_face)
    crops = np.asarray([c for photo in photos for c in photo.crops], dtype=np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    probs = predict_crops(module, crops, batch_size)
    table = faces_table(photos, probs)
    if annotate_dir is not None:
        annotate(photos, probs, annotate_dir)
    if out is not None:
        save_csv(out, table)
    return table, [photo.path for photo in photos if not photo.boxes], len(photos)


def add_arguments(parser):
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    parser.add_argument("--workdir", "--run", dest="workdir", type=Path, help="the finished run folder "
                        "(default: folds or folds/demo, the one finished last)")
    parser.add_argument("--out", type=Path, help="write the faces CSV here (default: print one line per face)")
    parser.add_argument("--annotate", type=Path, metavar="DIR", help="write copies with boxes and labels here")
    parser.add_argument("--no-detect", dest="detect", action="store_false",
                        help="each image is already one cropped face: no detection")
    parser.add_argument("--min-face", type=int, default=40, metavar="PX",
                        help="ignore faces smaller than this many pixels (default 40; FER2013's are 48)")
    parser.add_argument("--batch-size", type=int, default=256)


def command(args):
    """`fer-kaggle predict` (cli.py has found args.workdir)."""
    table, faceless, count = predict(args.paths, args.workdir, args.out, args.annotate, args.detect,
                                     args.min_face, args.batch_size)
    if args.out is None:
        for _, row in table.iterrows():
            print(face_line(row))
    for path in faceless:
        print(f"{path}: no face found")
    print(f"{len(table)} face(s) in {count - len(faceless)} of {count} image(s); "
          f"{len(faceless)} image(s) without a face"
          + (f"; wrote {args.out}" if args.out else "") + (f"; annotated copies in {args.annotate}" if args.annotate else ""))
    return 0
