"""Read and validate every CSV form of FER2013 into uint8 arrays.

Reads  the competition's `label,feature` / `id,feature`, the Kaggle challenge's `emotion,pixels` /
       `pixels`, and the single-file `emotion,pixels,Usage` (fer2013.csv, icml_face_data.csv);
       plain, .gz or .xz, CRLF, BOM. The form is recognised from the header (CSV_FORMS).
       inputs.py picks the form for a run and caches the arrays; folders.py reads image folders.

Parsing overlaps decompression (a reader thread; lzma and zlib release the GIL)
with per-row `np.fromstring` on the main thread: see BENCHMARKS.md.
"""
import hashlib
import lzma
import queue
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_kaggle.core.errors import FerKaggleError

CLASS_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 48
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE

_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b"
_BLOCK = 1 << 20


def fingerprint(path):
    """sha256 of the file's bytes, as hex: names a cache entry and ties folds to their train file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- decompression

def _decompressor(head):
    if head.startswith(_XZ_MAGIC):
        return "xz", lzma.LZMADecompressor()
    if head.startswith(_GZIP_MAGIC):
        return "gzip", zlib.decompressobj(wbits=31)
    return None, None


def _blocks(path):
    """Yield the decompressed bytes of `path`, decompressing in a background thread.

    Concatenated gzip members and xz streams (`cat a.gz b.gz`) are all read, as gzip does.
    """
    with open(path, "rb") as f:
        head = f.read(8)
    kind, _ = _decompressor(head)
    blocks = queue.Queue(maxsize=16)
    stop = threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                blocks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce():
        try:
            with open(path, "rb") as f:
                _, decompressor = _decompressor(head)
                while (chunk := f.read(_BLOCK)) and not stop.is_set():
                    while decompressor and chunk:
                        put(decompressor.decompress(chunk))
                        chunk = decompressor.unused_data if decompressor.eof else b""
                        if chunk:  # another member or stream follows
                            _, decompressor = _decompressor(chunk)
                            if decompressor is None:
                                raise EOFError("unexpected bytes follow the compressed data")
                    if decompressor is None:
                        put(chunk)
            if decompressor and not decompressor.eof:
                raise EOFError("it ends before the compressed stream does")
            put(None)
        except (lzma.LZMAError, zlib.error, EOFError, OSError) as exc:
            put(exc)

    threading.Thread(target=produce, daemon=True).start()
    try:
        while (block := blocks.get()) is not None:
            if isinstance(block, Exception):
                what = f"a corrupt or truncated {kind} file" if kind else "unreadable"
                raise FerKaggleError(f"{path}: {what} ({block}); download it again")
            yield block
    finally:
        stop.set()  # a reader stopped early (a bad row) must not leave the thread blocked on a full queue


def _lines(path):
    """Yield (line_number, line_bytes) without the line ending; line 1 is the header."""
    rest = b""
    number = 0
    for block in _blocks(path):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        for line in lines:
            number += 1
            yield number, line.rstrip(b"\r")
    if rest.strip():
        yield number + 1, rest.rstrip(b"\r")


# ---------------------------------------------------------------- forms

@dataclass(frozen=True)
class CsvForm:
    """One layout FER2013 is distributed in, recognised by its header's column names."""
    name: str       # what the user calls the file
    option: str     # its --format value
    role: str       # "train", "test" or "both" (train and held-out test rows, told apart by Usage)
    columns: tuple  # header names as the distributed file writes them

    @property
    def names(self):
        return tuple(column.strip().lower() for column in self.columns)

    def header(self):
        return ",".join(self.columns)


CSV_FORMS = (
    CsvForm("competition train", "competition", "train", ("label", "feature")),
    CsvForm("competition test", "competition", "test", ("id", "feature")),
    CsvForm("Kaggle challenge train.csv", "kaggle", "train", ("emotion", "pixels")),
    CsvForm("Kaggle challenge test.csv", "kaggle", "test", ("pixels",)),
    CsvForm("fer2013.csv", "fer2013", "both", ("emotion", "pixels", "Usage")),
    CsvForm("icml_face_data.csv", "icml", "both", ("emotion", " Usage", " pixels")),
)
LABEL_COLUMNS = ("label", "emotion")
PIXEL_COLUMNS = ("feature", "pixels")
# Usage values of the single-file forms; the two test splits are scored only once, at the very end.
USAGES = ("Training", "PublicTest", "PrivateTest")


def _forms_tried(forms):
    return "; ".join(f"'{form.header()}' ({form.name})" for form in forms)


def _shorten(text, limit=60):
    return text if len(text) <= limit else text[:limit] + "..."


def _first_row(path):
    """Line 2 of `path`, shortened, for an error message."""
    lines = _lines(path)
    try:
        next(lines, None)
        return _shorten(next(lines, (0, b""))[1].decode("utf-8", "replace"))
    finally:
        lines.close()


def _match_form(path, columns, role, option):
    """The CsvForm whose column names are `columns` (any order), or an error naming every form tried."""
    candidates = [form for form in CSV_FORMS if option in (None, form.option)]
    names = tuple(column.strip().lower() for column in columns)
    shown = _shorten(",".join(columns))
    matches = [form for form in candidates if sorted(form.names) == sorted(names)]
    if not matches:
        tried = "--format " + option + ": " if option else "tried "
        raise FerKaggleError(f"{path}: line 1 has columns '{shown}' and line 2 starts '{_first_row(path)}', "
                             f"which matches no FER2013 CSV form ({tried}{_forms_tried(candidates)})")
    def spaced(names):
        return any(name != name.lstrip() for name in names)

    form = next((f for f in matches if spaced(f.columns) == spaced(columns)), matches[0])
    if role not in (form.role, "any"):
        wanted = [f for f in candidates if f.role == role]
        hint = " (this looks like the other file: are train and test swapped?)" if form.role != "both" else (
            f"; {form.name} holds train and test rows: give it alone, as `bash run.sh {path.name} OUT`")
        raise FerKaggleError(f"{path}: line 1 has columns '{shown}' ({form.name}); expected a {role} file: "
                             f"{_forms_tried(wanted)}{hint}")
    return form


# ---------------------------------------------------------------- parsing

def _existing_file(path):
    path = Path(path)
    if not path.is_file():
        raise FerKaggleError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'no such file'}")
    return path


def _split_fields(line):
    return [field.strip().strip(b'"').strip() for field in line.split(b",")]


def _read_header(path, lines):
    """Line 1's column names as written: leading spaces kept (they tell icml_face_data.csv apart)."""
    try:
        number, header = next(lines)
    except StopIteration:
        raise FerKaggleError(f"{path}: the file is empty; expected a FER2013 CSV "
                             f"({_forms_tried(CSV_FORMS)})") from None
    if header.startswith(b"\xef\xbb\xbf"):
        header = header[3:]
    try:
        return tuple(field.strip(b'"').rstrip().decode("utf-8").strip('"') for field in header.split(b","))
    except UnicodeDecodeError:
        raise FerKaggleError(f"{path}: line 1 is not text; expected a FER2013 CSV "
                             f"({_forms_tried(CSV_FORMS)})") from None


def _first_bad_token(text):
    for token in text.split():
        if not token.isdigit() or int(token) > 255:
            return token
    return None


def _parse_pixels(path, number, text):
    """One row's 2304 pixels as uint8, or a FerKaggleError that names the line and the problem."""
    try:
        pixels = np.fromstring(text, dtype=np.int64, sep=" ")  # int64 saturates where int32 wraps
    except ValueError:
        pixels = None
    if pixels is None or pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        bad = _first_bad_token(text.decode("utf-8", "replace"))
        raise FerKaggleError(f"{path}: line {number}: pixel value '{bad}' is not an integer from 0 to 255")
    if pixels.size != NUM_PIXELS:
        raise FerKaggleError(
            f"{path}: line {number}: expected {NUM_PIXELS} pixel values (48x48), found {pixels.size}")
    return pixels.astype(np.uint8)


def _parse_int(path, number, column, text, low=None, high=None):
    try:
        value = int(text)
    except ValueError:
        shown = text.decode("utf-8", "replace") if text else ""
        what = f"'{shown}' is not an integer" if shown else "is missing"
        raise FerKaggleError(f"{path}: line {number}: {column} {what}") from None
    if low is not None and not low <= value <= high:
        raise FerKaggleError(f"{path}: line {number}: {column} {value} is outside {low}-{high}")
    return value


def _parse_usage(path, number, text):
    usage = text.decode("utf-8", "replace")
    for known in USAGES:
        if usage.lower() == known.lower():
            return known
    raise FerKaggleError(f"{path}: line {number}: Usage '{usage}' is not one of {', '.join(USAGES)}")


def detect_form(path, role="any", option=None):
    """The CsvForm of a CSV, from its header alone (nothing else is parsed)."""
    path = _existing_file(path)
    lines = _lines(path)
    try:
        return _match_form(path, _read_header(path, lines), role, option)
    finally:
        lines.close()


@dataclass
class Table:
    """The parsed rows of one FER2013 CSV; columns the form lacks are None."""
    form: CsvForm
    images: np.ndarray          # uint8 (N, 48, 48)
    labels: np.ndarray = None   # int64 0-6
    ids: np.ndarray = None      # int64: the file's ids, or the 0-based data row for forms without them
    usage: np.ndarray = None    # str: Training, PublicTest or PrivateTest
    line_numbers: list = None


def read_table(path, role="any", option=None):
    """Parse a FER2013 CSV of any form (or the one --format `option` names) that can play `role`."""
    path = _existing_file(path)
    if path.stat().st_size == 0:
        raise FerKaggleError(f"{path}: the file is empty; expected a FER2013 CSV ({_forms_tried(CSV_FORMS)})")
    lines = _lines(path)
    columns = _read_header(path, lines)
    form = _match_form(path, columns, role, option)
    names = [column.strip().lower() for column in columns]
    label_at = next((names.index(c) for c in LABEL_COLUMNS if c in names), None)
    id_at = names.index("id") if "id" in names else None
    usage_at = names.index("usage") if "usage" in names else None
    pixels_at = next(names.index(c) for c in PIXEL_COLUMNS if c in names)
    labels, ids, usage, images, numbers = [], [], [], [], []
    for number, line in lines:
        if not line.strip():
            continue
        fields = _split_fields(line)
        if len(fields) != len(names):
            raise FerKaggleError(f"{path}: line {number}: expected {len(names)} field{'s' * (len(names) > 1)} "
                                 f"({form.header()}), found {len(fields)}")
        if label_at is not None:
            labels.append(_parse_int(path, number, names[label_at], fields[label_at], 0, NUM_CLASSES - 1))
        ids.append(len(ids) if id_at is None else _parse_int(path, number, "id", fields[id_at]))
        if usage_at is not None:
            usage.append(_parse_usage(path, number, fields[usage_at]))
        images.append(_parse_pixels(path, number, fields[pixels_at]))
        numbers.append(number)
    if not images:
        raise FerKaggleError(f"{path}: has a header but no data rows")
    table = Table(form, np.stack(images).reshape(-1, IMAGE_SIZE, IMAGE_SIZE), ids=np.asarray(ids, np.int64),
                  line_numbers=numbers)
    if label_at is not None:
        table.labels = np.asarray(labels, dtype=np.int64)
    if usage_at is not None:
        table.usage = np.asarray(usage)
    if id_at is not None:
        _check_unique_ids(path, table.ids, numbers)
    return table


def _check_unique_ids(path, ids, numbers):
    _, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = first[np.argmax(counts > 1)]
        again = numbers[int(np.flatnonzero(ids == ids[dup])[1])]
        raise FerKaggleError(f"{path}: line {again}: id {ids[dup]} already appears on line {numbers[dup]}")


def read_train(path, option=None):
    """Read a train CSV (`label,feature` or `emotion,pixels`): returns (images uint8 (N,48,48), labels int64)."""
    table = read_table(path, "train", option)
    return table.images, table.labels


def read_test(path, option=None):
    """Read a test CSV (`id,feature`, or `pixels` with ids 0, 1, ...): returns (ids int64, images uint8)."""
    table = read_table(path, "test", option)
    return table.ids, table.images


def read_combined(path, option=None):
    """Read fer2013.csv or icml_face_data.csv: (train images, train labels, test ids, test images,
    test labels, test usage). Test rows are the PublicTest and PrivateTest rows; their ids are the
    0-based data rows of the file, their labels only ever give the final held-out accuracy."""
    table = read_table(path, "both", option)
    train, test = table.usage == "Training", table.usage != "Training"
    for rows, what in ((train, "Training"), (test, "PublicTest or PrivateTest")):
        if not rows.any():
            raise FerKaggleError(f"{path}: has no {what} rows (column Usage); both are needed")
    return (table.images[train], table.labels[train], table.ids[test], table.images[test],
            table.labels[test], table.usage[test])
