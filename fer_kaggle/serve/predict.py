"""The expressions of the faces in your own photos (or a video, or the webcam: video.py), with a finished
run's ensemble or its distilled student.

    python -m fer_kaggle.predict PATH... [--run folds/] [--out faces.csv] [--annotate DIR]
                                 [--model ensemble|student] [--detector mtcnn|haar]
                                 [--no-detect] [--min-face PX] [--batch-size N]
    python -m fer_kaggle.predict talk.mp4 [--out timeline.csv] [--annotate annotated.mp4] [--plot timeline.png]
    python -m fer_kaggle.predict --webcam [N]

PATHs are image files or folders (searched recursively for .jpg .jpeg .png .bmp .webp .tif .tiff
.pgm; hidden files skipped), or one video file. Each photo's faces are found (detect.py: MTCNN, or
OpenCV's Haar cascade), each face cut out of the grayscale photo the way FER2013's faces were framed,
shrunk to 48x48 and predicted.

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
from tqdm.auto import tqdm

from fer_kaggle.core.atomic import atomic_path, require_folder, save_csv
from fer_kaggle.data.competition import CLASS_NAMES, IMAGE_SIZE
from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.data.folders import IMAGE_SUFFIXES, image_files
from fer_kaggle.serve.detect import DEFAULT_DETECTOR, DETECTORS, crop, make_detector
from fer_kaggle.serve import video
from fer_kaggle.serve.inference import MODELS, load_ensemble, predict_crops


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


def find_faces(found, detect=True, min_face=40, detector=DEFAULT_DETECTOR):
    """A Photo per file with its squares and 48x48 crops; reads every file (an unreadable one stops all)."""
    detector = make_detector(detector) if detect else None
    photos = []
    for path, name in tqdm(found, desc="finding faces", unit="photo", leave=False, disable=None):
        image = read_photo(path)
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        photo = Photo(path, name)
        if detect:
            photo.boxes = detector(image, min_face)
        else:  # an already-cropped face: the whole image, squeezed to 48x48
            photo.boxes = [(0, 0, gray.shape[1], gray.shape[0])]
        photo.crops = [crop(gray, box) for box in photo.boxes]
        photos.append(photo)
    return photos


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


def predict(paths, run="folds", out=None, annotate_dir=None, detect=True, min_face=40, batch_size=256,
            model="ensemble", detector=DEFAULT_DETECTOR):
    """Find, predict, write; returns (faces table, paths of the images without a face, number of images)."""
    if out is not None:
        require_folder(out)
    if batch_size < 1 or min_face < 1:
        raise FerKaggleError("--batch-size and --min-face must be at least 1")
    module = load_ensemble(run, model=model)
    skip = Path(annotate_dir).resolve() if annotate_dir is not None else None
    photos = find_faces(find_images(paths, skip), detect, min_face, detector)
    crops = np.asarray([c for photo in photos for c in photo.crops], dtype=np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    probs = predict_crops(module, crops, batch_size)
    table = faces_table(photos, probs)
    if annotate_dir is not None:
        annotate(photos, probs, annotate_dir)
    if out is not None:
        save_csv(out, table)
    return table, [photo.path for photo in photos if not photo.boxes], len(photos)


def add_arguments(parser):
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                        help="image files or folders, or one video file (mp4, avi, mkv, webm, mov, ...)")
    parser.add_argument("--webcam", nargs="?", type=int, const=0, metavar="N",
                        help="a live window of camera N (default 0) with boxes, labels and frames per second; "
                             "q or Esc quits")
    parser.add_argument("--workdir", "--run", dest="workdir", type=Path, help="the finished run folder "
                        "(default: folds or folds/demo, the one finished last)")
    parser.add_argument("--model", choices=MODELS, default="ensemble", help="the run's kept ensemble (default), or "
                        "the small student that python -m fer_kaggle.distill made of it: several times faster")
    parser.add_argument("--out", type=Path, help="write the faces CSV (photos) or the timeline CSV (a video, "
                        "the webcam) here (default: print one line per face, or per track)")
    parser.add_argument("--annotate", type=Path, metavar="PATH", help="photos: a folder for copies with boxes and "
                        "labels; a video: the annotated video's file (.mp4, .avi, .mkv, .webm, .mov, .m4v)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="a video: each track's expression over time")
    parser.add_argument("--every", type=int, default=1, metavar="N",
                        help="a video, the webcam: analyse every Nth frame (default 1: all)")
    parser.add_argument("--smooth", type=float, default=video.SMOOTH_SECONDS, metavar="SECONDS",
                        help="a video, the webcam: time constant of each track's moving average of probabilities "
                             f"(default {video.SMOOTH_SECONDS}: a change shows after about 0.7 x SECONDS; 0: none)")
    parser.add_argument("--detector", choices=list(DETECTORS), default=DEFAULT_DETECTOR,
                        help=f"how faces are found (default {DEFAULT_DETECTOR}: it finds more faces than OpenCV's "
                             f"Haar cascade, turned ones too, in less time; haar: the fallback)")
    parser.add_argument("--no-detect", dest="detect", action="store_false",
                        help="each image is already one cropped face: no detection")
    parser.add_argument("--min-face", type=int, default=40, metavar="PX",
                        help="ignore faces smaller than this many pixels (default 40; FER2013's are 48)")
    parser.add_argument("--batch-size", type=int, default=256)


def track_lines(table):
    """`track 0: 0.0-9.9 s, 300 frames, mostly happy (87%)` for each track."""
    lines = []
    for track, rows in table.groupby("track"):
        counts = rows["label"].value_counts()
        lines.append(f"track {track}: {rows['seconds'].min():.1f}-{rows['seconds'].max():.1f} s, {len(rows)} "
                     f"frames, mostly {counts.index[0]} ({counts.iloc[0] / len(rows):.0%})")
    return lines


def video_command(args, module, detector):
    path = args.paths[0]
    table, timeline, taken = video.video(path, module, detector, args.out, args.annotate, args.plot, args.every,
                                         args.smooth, args.min_face, args.batch_size)
    if args.out is None:
        print("\n".join(track_lines(table)))
    tracks = table["track"].nunique()
    print(f"{path}: {timeline.frames} frames ({timeline.analysed} analysed) in {taken:.1f} s "
          f"({timeline.frames / max(taken, 1e-9):.1f} frames/s); {len(table)} faces in {tracks} track(s)"
          + ("" if len(table) else ": no face found")
          + "".join(f"; wrote {p}" for p in (args.out, args.annotate, args.plot) if p is not None))
    return 0


def webcam_command(args, module, detector):
    table, shown = video.webcam(args.webcam, module, detector, args.out, args.every, args.smooth, args.min_face)
    print(f"camera {args.webcam}: {shown} frames, {len(table)} faces in {table['track'].nunique()} track(s)"
          + (f"; wrote {args.out}" if args.out else ""))
    return 0


def command(args):
    """`fer-kaggle predict` (cli.py has found args.workdir)."""
    videos = [path for path in args.paths if video.is_video(path)]
    if args.webcam is not None and args.paths:
        raise FerKaggleError("give --webcam or paths, not both")
    if args.webcam is None and not args.paths:
        raise FerKaggleError("give image files or folders, one video, or --webcam")
    if videos and len(args.paths) > 1:
        raise FerKaggleError(f"{videos[0]}: give one video at a time, without photos")
    if args.webcam is None and not videos and (args.plot is not None or args.every != 1):
        raise FerKaggleError("--plot and --every are for a video or the webcam")
    if (args.webcam is not None or videos) and not args.detect:
        raise FerKaggleError("--no-detect is for photos that are already cropped faces, not a video or the webcam")
    if args.webcam is not None or videos:
        module, detector = load_ensemble(args.workdir, model=args.model), make_detector(args.detector)
        return (webcam_command if args.webcam is not None else video_command)(args, module, detector)
    table, faceless, count = predict(args.paths, args.workdir, args.out, args.annotate, args.detect,
                                     args.min_face, args.batch_size, args.model, args.detector)
    if args.out is None:
        for _, row in table.iterrows():
            print(face_line(row))
    for path in faceless:
        print(f"{path}: no face found")
    print(f"{len(table)} face(s) in {count - len(faceless)} of {count} image(s); "
          f"{len(faceless)} image(s) without a face"
          + (f"; wrote {args.out}" if args.out else "") + (f"; annotated copies in {args.annotate}" if args.annotate else ""))
    return 0
