"""Stage 1-2: read and validate the competition CSVs into uint8 arrays.

Reads  train `label,feature` and test `id,feature` CSVs (plain, .gz or .xz, CRLF, BOM).
Writes `<workdir>/cache/<kind>-<fingerprint>.npz` so a resumed run never parses twice.

Parsing overlaps decompression (a reader thread; lzma and zlib release the GIL)
with per-row `np.fromstring` on the main thread: see BENCHMARKS.md.
"""
import hashlib
import lzma
import queue
import threading
import zlib
from pathlib import Path

import numpy as np

from .atomic import save_npz
from .errors import FerKaggleError

CLASS_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 48
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
TRAIN_COLUMNS = ("label", "feature")
TEST_COLUMNS = ("id", "feature")

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


# ---------------------------------------------------------------- parsing

def _existing_file(path):
    path = Path(path)
    if not path.is_file():
        raise FerKaggleError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'no such file'}")
    return path


def _split_fields(line):
    return [field.strip().strip(b'"').strip() for field in line.split(b",")]


def _read_header(path, lines, expected):
    try:
        number, header = next(lines)
    except StopIteration:
        raise FerKaggleError(f"{path}: the file is empty; expected a CSV with columns {','.join(expected)}") from None
    if header.startswith(b"\xef\xbb\xbf"):
        header = header[3:]
    try:
        columns = tuple(field.decode("utf-8").lower() for field in _split_fields(header))
    except UnicodeDecodeError:
        raise FerKaggleError(f"{path}: line 1 is not text; expected a CSV with columns {','.join(expected)}") from None
    if columns == expected:
        return columns
    found = ",".join(columns) if len(",".join(columns)) < 80 else ",".join(columns)[:80] + "..."
    message = f"{path}: line 1 has columns '{found}'; expected '{','.join(expected)}'"
    if columns in (TRAIN_COLUMNS, TEST_COLUMNS):
        message += " (this looks like the other file: are train and test swapped?)"
    raise FerKaggleError(message)


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


def _read_rows(path, expected):
    """Parse a CSV with columns (<key>, feature): returns (keys, images, line_numbers)."""
    path = _existing_file(path)
    if path.stat().st_size == 0:
        raise FerKaggleError(f"{path}: the file is empty; expected a CSV with columns {','.join(expected)}")
    lines = _lines(path)
    _read_header(path, lines, expected)
    key_name = expected[0]
    low, high = (0, NUM_CLASSES - 1) if key_name == "label" else (None, None)
    keys, images, numbers = [], [], []
    for number, line in lines:
        if not line.strip():
            continue
        fields = _split_fields(line)
        if len(fields) != 2:
            raise FerKaggleError(f"{path}: line {number}: expected 2 fields ({','.join(expected)}), found {len(fields)}")
        keys.append(_parse_int(path, number, key_name, fields[0], low, high))
        images.append(_parse_pixels(path, number, fields[1]))
        numbers.append(number)
    if not images:
        raise FerKaggleError(f"{path}: has a header but no data rows")
    return (np.asarray(keys, dtype=np.int64),
            np.stack(images).reshape(-1, IMAGE_SIZE, IMAGE_SIZE), numbers)


def read_train(path):
    """Read a `label,feature` train CSV: returns (images uint8 (N,48,48), labels int64 (N,))."""
    labels, images, _ = _read_rows(path, TRAIN_COLUMNS)
    return images, labels


def read_test(path):
    """Read an `id,feature` test CSV: returns (ids int64 (N,), images uint8 (N,48,48))."""
    ids, images, numbers = _read_rows(path, TEST_COLUMNS)
    _, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = first[np.argmax(counts > 1)]
        again = numbers[int(np.flatnonzero(ids == ids[dup])[1])]
        raise FerKaggleError(f"{path}: line {again}: id {ids[dup]} already appears on line {numbers[dup]}")
    return ids, images


# ---------------------------------------------------------------- cache

def cache_path(cache_dir, kind, file_fingerprint):
    """Where the parsed arrays of a `kind` ("train" or "test") file with this fingerprint are cached."""
    return Path(cache_dir) / f"{kind}-{file_fingerprint[:16]}.npz"


def _cached(kind, reader, path, cache_dir):
    cache = cache_path(cache_dir, kind, fingerprint(_existing_file(path)))
    if cache.exists():
        with np.load(cache) as saved:
            return tuple(saved[name] for name in saved.files)
    arrays = reader(path)
    save_npz(cache, **{f"arr_{i}": a for i, a in enumerate(arrays)})
    return arrays


def load_train(path, cache_dir):
    """`read_train`, cached in `cache_dir` under the file's fingerprint."""
    return _cached("train", read_train, path, cache_dir)


def load_test(path, cache_dir):
    """`read_test`, cached in `cache_dir` under the file's fingerprint."""
    return _cached("test", read_test, path, cache_dir)
