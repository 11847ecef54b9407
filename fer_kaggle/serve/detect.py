"""Faces found in a picture, and cut out the way FER2013's faces were framed.

    detector = make_detector("haar")          # a callable: (gray image, min face px) -> [(x, y, w, h)]
    squares = [face_square(box) for box in detector(gray, min_face=40)]
    faces = [crop(gray, square) for square in squares]   # 48x48 uint8, as the model reads them

Photos (predict.py) and videos (video.py) both use these, so a face is framed the same everywhere.
"""
from pathlib import Path

import cv2

from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.data.competition import IMAGE_SIZE

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




class Haar:
    """OpenCV's frontal-face Haar cascade (Viola-Jones, 2001) as a detector: gray image -> boxes."""

    name = "haar"

    def __init__(self):
        self.cascade = cascade()

    def __call__(self, gray, min_face=40):
        return detect_faces(gray, self.cascade, min_face)


DETECTORS = {"haar": Haar}


def make_detector(name="haar"):
    if name not in DETECTORS:
        raise FerKaggleError(f"--detector {name}: choose one of {', '.join(DETECTORS)}")
    return DETECTORS[name]()
