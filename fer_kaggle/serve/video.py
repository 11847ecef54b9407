"""Expressions in a video or from a webcam: faces found, tracked, predicted in batches, smoothed in time.

    python -m fer_kaggle.predict talk.mp4 [--out timeline.csv] [--annotate annotated.mp4] [--plot timeline.png]
                                 [--every N] [--smooth SECONDS]
    python -m fer_kaggle.predict --webcam [N] [--out timeline.csv]

The stages, frame by frame: decode (OpenCV's FFmpeg), find the faces (the detector photos use, on
every Nth frame with --every N), follow each face with a track id (Tracker), cut it out as FER2013's
faces were framed, predict the faces of several frames in one batch, smooth each track's
probabilities in time (Smoother), then write:

- the timeline CSV: frame, seconds, track, x, y, w, h (the square the model read), the seven smoothed
  probabilities, label (their argmax); one row per face per analysed frame;
- the annotated video: every frame, boxes with "#track label 0.87" (frames between analysed ones show
  the last analysed frame's boxes); mp4/m4v/mov as MPEG-4 part 2, avi/mkv as Motion JPEG, webm as VP8;
- the plot: one panel per track, its seven smoothed probabilities against seconds.

Nothing is written until the whole video has been read: a corrupt or truncated video stops with one
line and leaves no output behind. A video without a face is not an error: its timeline has no rows.
"""
import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

# FFmpeg inside OpenCV prints its own complaints ("moov atom not found") to stderr; the errors below say
# what went wrong in one line instead. Read when OpenCV first opens a video, so setting it here is in time.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from fer_kaggle.core.atomic import atomic_path, require_folder, save_csv  # noqa: E402
from fer_kaggle.core.errors import FerKaggleError  # noqa: E402
from fer_kaggle.data.competition import CLASS_NAMES  # noqa: E402
from fer_kaggle.data.folders import IMAGE_SUFFIXES  # noqa: E402
from fer_kaggle.serve import detect  # noqa: E402
from fer_kaggle.serve.inference import predict_crops  # noqa: E402

# What the annotated video is written as, by its suffix: codecs that the opencv-python(-headless) wheels'
# FFmpeg writes (H.264 is not among them).
WRITERS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG", ".webm": "VP80"}
VIDEO_SUFFIXES = (*WRITERS, ".mpg", ".mpeg", ".wmv", ".flv", ".ogv", ".ts", ".3gp")

# Smoothing: an exponential moving average of each track's probabilities in time, with this time constant
# (seconds). A step from one expression to another shows in the label after tau x ln 2 (0.35 s at 0.5 s):
# that is the lag it adds; --smooth 0 turns it off.
SMOOTH_SECONDS = 0.5
# Tracking: a face joins the live track whose last box it overlaps most, if their IoU reaches this; a track
# not seen for TRACK_PATIENCE seconds (and not in the frame before) ends: a face that comes back later gets a
# new id.
TRACK_IOU = 0.3
TRACK_PATIENCE = 1.0
# Frames decoded before their faces go through the model together (the webcam: one, for no delay).
CHUNK_FRAMES = 32
# A video whose decoder stops this many frames short of the count in its header is truncated.
TRUNCATED_FRAMES = 2


def iou(a, b):
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter) if inter else 0.0


@dataclass
class Track:
    id: int
    box: tuple
    seen: float                   # seconds, when the box was last found
    missed: int = 0               # analysed frames since then
    probs: np.ndarray = None      # smoothed probabilities (None before the first prediction)
    at: float = 0.0               # seconds of the last smoothing step


class Tracker:
    """Greedy IoU matching of each frame's boxes to the live tracks (SORT without its Kalman filter: at
    video frame rates a face moves little between frames, and FER needs the id, not a motion model)."""

    def __init__(self, min_iou=TRACK_IOU, patience=TRACK_PATIENCE):
        self.min_iou, self.patience = min_iou, patience
        self.live, self.next_id = [], 0

    def update(self, boxes, seconds):
        """The Track of each box, in the boxes' order; new ids for faces that match no live track. A track seen
        in the frame before stays live however long ago that was (a webcam frame can take over a second on a
        busy machine)."""
        self.live = [t for t in self.live if seconds - t.seen <= self.patience or t.missed == 0]
        for track in self.live:
            track.missed += 1
        pairs = sorted(((iou(box, t.box), b, k) for b, box in enumerate(boxes) for k, t in enumerate(self.live)),
                       reverse=True)
        matched, taken = {}, set()
        for overlap, b, k in pairs:
            if overlap < self.min_iou:
                break
            if b not in matched and k not in taken:
                matched[b] = self.live[k]
                taken.add(k)
        tracks = []
        for b, box in enumerate(boxes):
            track = matched.get(b)
            if track is None:
                track = Track(self.next_id, box, seconds)
                self.next_id += 1
                self.live.append(track)
            track.box, track.seen, track.missed = box, seconds, 0
            tracks.append(track)
        return tracks


def smooth(track, probs, seconds, tau):
    """Fold one prediction into the track's smoothed probabilities (EMA in time, constant tau seconds)."""
    if track.probs is None or tau <= 0:
        track.probs = probs.copy()
    else:
        weight = 1.0 - math.exp(-max(0.0, seconds - track.at) / tau)
        track.probs = track.probs + weight * (probs - track.probs)
    track.at = seconds
    return track.probs


@dataclass
class Face:
    frame: int
    seconds: float
    track: Track
    square: tuple
    crop: np.ndarray
    probs: np.ndarray = None      # smoothed, once predicted


@dataclass
class Timeline:
    """What the analysis found: one Face per face per analysed frame, in order."""
    faces: list = field(default_factory=list)
    frames: int = 0               # frames decoded
    analysed: int = 0             # of which analysed (every Nth)

    def table(self):
        rows = [(f.frame, round(f.seconds, 3), f.track.id, *f.square) for f in self.faces]
        table = pd.DataFrame(rows, columns=["frame", "seconds", "track", "x", "y", "w", "h"])
        probs = np.array([f.probs for f in self.faces], np.float32).reshape(-1, len(CLASS_NAMES))
        for k, name in enumerate(CLASS_NAMES):
            table[name] = probs[:, k].round(6)
        table["label"] = [CLASS_NAMES[k] for k in probs.argmax(1)] if len(probs) else []
        return table


class Analyser:
    """Frames in, faces with smoothed probabilities out; the state (tracks) lives across chunks."""

    def __init__(self, module, detector, every=1, tau=SMOOTH_SECONDS, min_face=40, batch_size=256):
        if every < 1 or min_face < 1 or batch_size < 1:
            raise FerKaggleError("--every, --min-face and --batch-size must be at least 1")
        if not tau >= 0:
            raise FerKaggleError(f"--smooth {tau}: must be 0 (off) or more seconds")
        self.module, self.detector, self.every, self.tau = module, detector, every, tau
        self.min_face, self.batch_size = min_face, batch_size
        self.tracker, self.timeline = Tracker(), Timeline()
        self.shown = []           # the faces drawn on frames until the next analysed frame

    def chunk(self, frames):
        """Analyse a list of (frame number, seconds, BGR image); returns the faces to draw on each frame."""
        found, drawn = [], []
        for number, seconds, image in frames:
            self.timeline.frames += 1
            if number % self.every == 0:
                self.timeline.analysed += 1
                gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
                squares = self.detector(image, self.min_face)
                tracks = self.tracker.update(squares, seconds)
                self.shown = [Face(number, seconds, track, square, detect.crop(gray, square))
                              for track, square in zip(tracks, squares)]
                found += self.shown
            drawn.append(self.shown)
        if found:  # every face of the chunk through the model in one call, then smoothed in frame order
            probs = predict_crops(self.module, np.stack([f.crop for f in found]), self.batch_size)
            for face, p in zip(found, probs):
                face.probs = smooth(face.track, p, face.seconds, self.tau)
        self.timeline.faces += found
        return drawn


def draw(image, faces, fps=None):
    """Boxes and "#track label 0.87" on the frame (in place); the frames per second in the corner."""
    thick = max(1, round(max(image.shape[:2]) / 320))
    for face in faces:
        x, y, w, h = face.square
        text = f"#{face.track.id} {CLASS_NAMES[face.probs.argmax()]} {face.probs.max():.2f}"
        cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), (0, 255, 0), thick)
        scale = max(0.4, w / 300)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        top = y - th - base - thick if y - th - base - thick > 0 else y + h
        cv2.rectangle(image, (max(0, x), top), (max(0, x) + tw, top + th + base), (0, 255, 0), cv2.FILLED)
        cv2.putText(image, text, (max(0, x), top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick,
                    cv2.LINE_AA)
    if fps is not None:
        cv2.putText(image, f"{fps:.1f} fps", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 255), 2, cv2.LINE_AA)
    return image


# ---------------------------------------------------------------- a video file

def is_video(path):
    """A video's suffix, or a file whose suffix is no image's (OpenCV's FFmpeg then says whether it reads it)."""
    path = Path(path)
    suffix = path.suffix.lower()
    return suffix in VIDEO_SUFFIXES or (path.is_file() and suffix not in IMAGE_SUFFIXES)


def open_video(path):
    """An opened cv2.VideoCapture of the file, its frames per second and the frame count its header gives."""
    path = Path(path)
    if not path.is_file():
        raise FerKaggleError(f"{path}: no such file")
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise FerKaggleError(f"{path}: not a video OpenCV can read (corrupt, truncated, or a container or codec "
                             f"its FFmpeg does not know)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not fps or not math.isfinite(fps) or fps <= 0:
        fps = 25.0  # a header without a frame rate: seconds are counted at 25 frames a second
    return capture, fps, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)


def frames_of(capture, fps, chunk=CHUNK_FRAMES):
    """Lists of up to `chunk` (frame number, seconds, BGR image), until the decoder stops."""
    number, frames = 0, []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append((number, number / fps, image))
        number += 1
        if len(frames) == chunk:
            yield frames
            frames = []
    if frames:
        yield frames


def video_writer(tmp, path, fps, size):
    """A cv2.VideoWriter to the temporary `tmp`, in the codec that the target `path`'s suffix stands for."""
    fourcc = WRITERS[Path(path).suffix.lower()]
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise FerKaggleError(f"{path}: OpenCV could not write a {fourcc} video there")
    return writer


def analyse_video(path, analyser, annotate=None):
    """Read the whole video through `analyser`; with `annotate`, write the annotated copy (moved into place
    only once the whole video has been read). Returns the video's frames per second."""
    capture, fps, announced = open_video(path)
    size = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    with contextlib.ExitStack() as stack:
        stack.callback(capture.release)
        writer = None
        if annotate is not None:
            writer = video_writer(stack.enter_context(atomic_path(annotate, keep_suffix=True)), annotate, fps, size)
            stack.callback(writer.release)  # before atomic_path moves the file: callbacks run last-in first-out
        bar = stack.enter_context(tqdm(total=announced or None, desc=f"reading {Path(path).name}", unit="frame",
                                       leave=False, disable=None))
        for frames in frames_of(capture, fps):
            drawn = analyser.chunk(frames)
            if writer is not None:
                for (_, _, image), faces in zip(frames, drawn):
                    writer.write(draw(image, faces))
            bar.update(len(frames))
        decoded = analyser.timeline.frames
        if decoded == 0:
            raise FerKaggleError(f"{path}: no frame could be decoded (corrupt, or a codec OpenCV's FFmpeg lacks)")
        if announced - decoded >= TRUNCATED_FRAMES:
            raise FerKaggleError(f"{path}: truncated or damaged: {decoded} of the {announced} frames its header "
                                 f"announces could be decoded")
    return fps


def plot(timeline, path):
    """One panel per track (the 8 longest), its smoothed probabilities against seconds; written atomically."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FerKaggleError("--plot needs matplotlib: pip install 'fer_kaggle[report]'") from None
    table = timeline.table()
    tracks = table["track"].value_counts().index[:8].sort_values() if len(table) else []
    fig, axes = plt.subplots(max(1, len(tracks)), 1, figsize=(10, 2.2 * max(1, len(tracks))), sharex=True,
                             squeeze=False)
    for ax, track in zip(axes[:, 0], tracks):
        rows = table[table["track"] == track]
        for name in CLASS_NAMES:
            ax.plot(rows["seconds"], rows[name], label=name, linewidth=1.2)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"track {track}")
    if not len(tracks):
        axes[0, 0].text(0.5, 0.5, "no face found", ha="center", va="center", transform=axes[0, 0].transAxes)
    axes[0, 0].legend(ncol=len(CLASS_NAMES), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.35))
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    with atomic_path(path, keep_suffix=True) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def check_outputs(out, annotate, plot_path):
    """Stop before any work if an output cannot be written where it is asked for."""
    for path in (out, annotate, plot_path):
        if path is not None:
            require_folder(path)
    if annotate is not None and Path(annotate).suffix.lower() not in WRITERS:
        raise FerKaggleError(f"--annotate {annotate}: an annotated video is written as {', '.join(WRITERS)}")


def video(path, module, detector, out=None, annotate=None, plot_path=None, every=1, tau=SMOOTH_SECONDS,
          min_face=40, batch_size=256):
    """Analyse a video file and write what was asked; returns (timeline table, Timeline, seconds taken)."""
    check_outputs(out, annotate, plot_path)
    analyser = Analyser(module, detector, every, tau, min_face, batch_size)
    started = time.perf_counter()
    analyse_video(path, analyser, annotate)
    taken = time.perf_counter() - started
    table = analyser.timeline.table()
    if out is not None:
        save_csv(out, table)
    if plot_path is not None:
        plot(analyser.timeline, plot_path)
    return table, analyser.timeline, taken


# ---------------------------------------------------------------- the webcam

class Window:
    """A Tk window showing frames (the standard library's: opencv-python-headless has no windows). `q` or
    Esc, or closing it, asks to stop."""

    def __init__(self, title):
        try:
            import tkinter
        except ImportError:
            raise FerKaggleError("--webcam needs a window, and this Python has no tkinter (its Tk library is "
                                 "missing)") from None
        try:
            self.root = tkinter.Tk()
        except tkinter.TclError as exc:
            raise FerKaggleError(f"--webcam needs a display to show its window, and there is none ({exc}); "
                                 f"record a video and give its file instead") from None
        self.root.title(title)
        self.label = tkinter.Label(self.root)
        self.label.pack()
        self.stopped = False
        for key in ("q", "Q", "<Escape>"):
            self.root.bind(key, self._stop)
        self.root.protocol("WM_DELETE_WINDOW", self._stop)
        self._tkinter = tkinter

    def _stop(self, *_):
        self.stopped = True

    def show(self, image):
        """Show a BGR frame; False once the user asked to stop."""
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        header = f"P6 {rgb.shape[1]} {rgb.shape[0]} 255 ".encode()
        self.photo = self._tkinter.PhotoImage(data=header + rgb.tobytes(), format="PPM")
        self.label.configure(image=self.photo)
        self.root.update()
        return not self.stopped

    def close(self):
        self.root.destroy()


def open_camera(index):
    capture = cv2.VideoCapture(index)
    ok = capture.isOpened() and capture.read()[0]
    if not ok:
        capture.release()
        raise FerKaggleError(f"--webcam {index}: no camera {index} could be opened (none attached, in use by "
                             f"another program, or not allowed)")
    return capture


def live(capture, window, analyser, clock=time.perf_counter):
    """Frames from the camera through the analyser to the window, with the frames per second, until the
    window asks to stop or the camera ends. Returns the frames shown."""
    started, shown, fps = clock(), 0, None
    while True:
        ok, image = capture.read()
        if not ok:
            break
        now = clock() - started
        (faces,) = analyser.chunk([(shown, now, image)])
        shown += 1
        fps = shown / now if now > 0 else None
        if not window.show(draw(image, faces, fps)):
            break
    return shown


def webcam(index, module, detector, out=None, every=1, tau=SMOOTH_SECONDS, min_face=40):
    """The live window; with `out`, the timeline written when it closes. Returns (table, frames shown)."""
    check_outputs(out, None, None)
    analyser = Analyser(module, detector, every, tau, min_face)
    capture = open_camera(index)
    try:
        window = Window(f"fer_kaggle: camera {index} (q or Esc quits)")
        try:
            shown = live(capture, window, analyser)
        finally:
            window.close()
    finally:
        capture.release()
    table = analyser.timeline.table()
    if out is not None:
        save_csv(out, table)
    return table, shown
