"""Faces found in a picture, and cut out the way FER2013's faces were framed.

    detector = make_detector()                # MTCNN (default) or "haar" (the fallback)
    squares = detector(image, min_face=40)    # BGR or gray image -> FER-framed squares (x, y, w, h)
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
# cascade's smallest window is 24 px there (MTCNN's 12), so a face under 24 * side / 1280 px (75 px in a
# 4000 px photo) is missed by Haar. Faces are cut out of the full-size photo.
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


def face_square(box, framing=1 + 2 * MARGIN):
    """The square the model reads for a detector's box: `framing` times its longer side, on its centre."""
    x, y, w, h = box
    side = round(max(w, h) * framing)
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


class Detector:
    """A face detector: an image (BGR or gray) -> FER-framed squares (x, y, w, h), left to right.

    A photo larger than DETECT_MAX_SIDE is shrunk for detection only (a 12 MP photo takes seconds
    otherwise); the squares are in the full photo's pixels. `framing`: the FER2013 square's side over
    the detector's box's longer side (each detector frames a face its own way; measured per detector).
    """

    name, framing = "", 1.0

    def boxes(self, image, min_face):
        raise NotImplementedError

    def __call__(self, image, min_face=40):
        scale = min(1.0, DETECT_MAX_SIDE / max(image.shape[:2]))
        small = image if scale == 1.0 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        found = self.boxes(small, min_face * scale)
        boxes = [tuple(round(float(v) / scale) for v in box) for box in found]
        return sorted(face_square(box, self.framing) for box in boxes if max(box[2:]) >= min_face)


class Haar(Detector):
    """OpenCV's frontal-face Haar cascade (Viola-Jones, 2001)."""

    name, framing = "haar", 1 + 2 * MARGIN

    def __init__(self):
        self.cascade = cascade()

    def boxes(self, image, min_face):
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        # equalised for detection only: the model reads the photo's own pixels, as FER2013's were
        return self.cascade.detectMultiScale(cv2.equalizeHist(gray), scaleFactor=1.1, minNeighbors=5,
                                             minSize=(max(24, round(min_face)),) * 2)


class MTCNN(Detector):
    """The MTCNN cascade of three CNNs (Zhang et al. 2016; mtcnn.py). Its box runs from the brow to below the
    chin (1.3 times as tall as wide); FER2013's square is 0.94 of its height, on its centre: measured as
    MARGIN was (400 bundled train rows upscaled to 192 px on gray and noise: median 0.941, quartiles
    0.87-1.05, centre within 2%; BENCHMARKS.md)."""

    name, framing = "mtcnn", 0.94

    def __init__(self):
        from fer_kaggle.serve.mtcnn import MTCNN as Cascade
        self.cascade = Cascade()

    def boxes(self, image, min_face):
        return self.cascade(image, max(12, round(min_face)))


# The default is the better of the two on every measure taken (BENCHMARKS.md, "Face detectors"): MTCNN finds
# more faces (89% of FER-framed faces against Haar's 63%; the cameraman in three-quarter profile that Haar
# misses), no more false ones, in less time. Haar stays as the fallback (--detector haar).
DETECTORS = {"mtcnn": MTCNN, "haar": Haar}
DEFAULT_DETECTOR = "mtcnn"


def make_detector(name=DEFAULT_DETECTOR):
    if name not in DETECTORS:
        raise FerKaggleError(f"--detector {name}: choose one of {', '.join(DETECTORS)}")
    return DETECTORS[name]()
