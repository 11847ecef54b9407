"""Benchmarks of what users run after the competition: face detectors, and video end to end.

    python -m fer_kaggle.bench detectors [--rows 800]
    python -m fer_kaggle.bench video [--workdir folds] [--frames 300]

detectors: each detector (detect.py) on
  - real photos shipped inside registry packages: three portraits with one face each (scikit-image's
    astronaut and camera, matplotlib's grace_hopper) and twelve photos with none (scikit-image's);
  - FER2013's own faces: `--rows` bundled train rows upscaled to 192 px, each inside a 448 px picture
    (gray, noise, or a real photo around it): found where they are, and how their square overlaps the
    FER2013 frame (IoU with the pasted square);
  - speed: milliseconds per 640x480 frame with one face (median of 20, after a warm-up).
video: a 640x480 video at 30 frames/s with one FER2013 face moving across a real photo, through the whole
  path (decode, detect, track, predict, smooth) with the run's kept ensemble and, where the run has one, its
  student (distill.py), each with each detector: frames per second end to end.
"""
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.data.competition import read_train
from fer_kaggle.data.inputs import DEMO_TRAIN
from fer_kaggle.serve import detect, video
from fer_kaggle.serve.inference import load_ensemble

NO_FACE = ("brick", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field", "moon", "page", "rocket",
           "text", "retina")
FRAME = (640, 480)


def _skimage_data():
    try:
        import skimage.data
    except ImportError:
        raise FerKaggleError("bench detectors reads scikit-image's sample photos: pip install scikit-image "
                             "(or 'fer_kaggle[test]')") from None
    return skimage.data


def _bgr(image):
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR if image.ndim == 2 else cv2.COLOR_RGB2BGR)


def real_photos():
    """({name: BGR portrait with one face}, {name: BGR photo with none})."""
    import matplotlib
    data = _skimage_data()
    hopper = cv2.imread(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))
    portraits = {"astronaut": _bgr(data.astronaut()), "camera": _bgr(data.camera()), "grace_hopper": hopper}
    return portraits, {name: _bgr(getattr(data, name)()) for name in NO_FACE}


def fer_pictures(rows, backdrop):
    """(picture, pasted square) for each row: the face upscaled to 192 px inside a 448 px gray picture, noise,
    or the real photo `backdrop` (by turns)."""
    images = read_train(DEMO_TRAIN)[0][:rows]
    side, pad, rng = 192, 128, np.random.default_rng(0)
    size = side + 2 * pad
    grounds = [np.full((size, size), 128, np.uint8), None, cv2.resize(backdrop, (size, size))]
    for row, face in enumerate(images):
        ground = grounds[row % 3]
        picture = rng.integers(0, 256, (size, size)).astype(np.uint8) if ground is None else ground.copy()
        picture[pad:pad + side, pad:pad + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        yield picture, (pad, pad, side, side)


def frame_with_face(backdrop, face, at=(250, 120), side=150):
    frame = cv2.resize(backdrop, FRAME)
    frame[at[1]:at[1] + side, at[0]:at[0] + side] = cv2.cvtColor(cv2.resize(face, (side, side)), cv2.COLOR_GRAY2BGR)
    return frame


def bench_detectors(rows=800):
    portraits, empty = real_photos()
    backdrop = cv2.cvtColor(empty["coffee"], cv2.COLOR_BGR2GRAY)
    face = read_train(DEMO_TRAIN)[0][300]
    frame = frame_with_face(cv2.cvtColor(backdrop, cv2.COLOR_GRAY2BGR), face)
    print(f"face detectors, {torch.get_num_threads()} torch threads, OpenCV {cv2.__version__}:")
    print(f"{'detector':<8} {'portraits':>10} {'false faces':>12} {'FER faces found':>16} {'IoU median':>11} "
          f"{'false (FER)':>12} {'ms/640x480':>11}")
    for name in detect.DETECTORS:
        detector = detect.make_detector(name)
        missed = [n for n, photo in portraits.items() if len(detector(photo)) != 1]
        found = len(portraits) - len(missed)
        false_real = sum(len(detector(photo)) for photo in empty.values())
        hits, overlaps, false_fer = 0, [], 0
        for picture, square in fer_pictures(rows, backdrop):
            squares = detector(picture)
            best = max((video.iou(s, square) for s in squares), default=0.0)
            if best >= 0.3:
                hits += 1
                overlaps.append(best)
            false_fer += sum(video.iou(s, square) < 0.3 for s in squares)
        detector(frame)
        times = []
        for _ in range(20):
            started = time.perf_counter()
            detector(frame)
            times.append(time.perf_counter() - started)
        print(f"{name:<8} {found:>7} / {len(portraits)} {false_real:>6} in {len(empty):<3} {hits:>9} / {rows:<4} "
              f"{np.median(overlaps) if overlaps else 0:>11.2f} {false_fer:>12} {1000 * statistics.median(times):>11.1f}"
              + (f"   (missed: {', '.join(missed)})" if missed else ""))
    return 0


def _write_clip(path, frames, backdrop, faces):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, FRAME)
    for k in range(frames):
        x = 60 + (k * 3) % 400  # moving right, 3 px a frame, wrapping
        writer.write(frame_with_face(backdrop, faces[(k // 60) % len(faces)], at=(x, 150)))
    writer.release()


def bench_video(workdir, frames=300):
    """Frames per second end to end for each model the run has and each detector."""
    _, empty = real_photos()
    faces = read_train(DEMO_TRAIN)[0][[300, 301, 302, 305, 306]]
    models = ["ensemble"] + (["student"] if (Path(workdir) / "student.json").is_file() else [])
    print(f"video end to end (decode, detect, track, predict, smooth), {FRAME[0]}x{FRAME[1]}, {frames} frames, one "
          f"face, run {workdir}, {torch.get_num_threads()} torch threads:")
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        _write_clip(clip, frames, empty["coffee"], faces)
        for model in models:
            module = load_ensemble(workdir, model=model)
            for name in detect.DETECTORS:
                detector = detect.make_detector(name)
                video.video(clip, module, detector)  # warm-up: kernels, caches
                rates = []
                for _ in range(3):
                    table, timeline, taken = video.video(clip, module, detector)
                    rates.append(timeline.frames / taken)
                print(f"  {model:<9} ({len(module.names)} units) {name:<6} {statistics.median(rates):6.1f} frames/s "
                      f"(range {min(rates):.1f}-{max(rates):.1f}), faces in {len(table)} of {frames} frames")
    return 0
