"""Parsing and validation of the competition CSVs (fer_kaggle.data), on small files built from real rows."""
import gzip
import lzma
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import DEMO

from fer_kaggle.data import competition as data
from fer_kaggle.data import inputs
from fer_kaggle.data.competition import FerKaggleError, read_test, read_train

N_ROWS = 6


def _bundled_lines(name, n=N_ROWS):
    """Header plus the first `n` data rows of a bundled .csv.xz, as str lines without endings."""
    with lzma.open(DEMO / name) as f:
        head = f.read(200_000).decode()
    lines = head.splitlines()
    assert len(lines) > n + 1, "the bundled sample has too few rows for these tests"
    return lines[: n + 1]


TRAIN_LINES = _bundled_lines("train.csv.xz")
TEST_LINES = _bundled_lines("test.csv.xz")
# A real pixel field, for rows built by hand.
PIXELS = TRAIN_LINES[1].split(",")[1]


def _write(path, lines, newline="\n", trailing=True, prefix=b""):
    text = newline.join(lines) + (newline if trailing else "")
    raw = prefix + text.encode()
    if path.name.endswith(".gz"):
        raw = gzip.compress(raw)
    elif path.name.endswith(".xz"):
        raw = lzma.compress(raw)
    path.write_bytes(raw)
    return path


def _reference(path):
    """A naive reader to compare with: pandas plus one np.fromstring per row."""
    frame = pd.read_csv(path, encoding="utf-8-sig", dtype=str, skip_blank_lines=True)
    frame.columns = [c.strip().lower() for c in frame.columns]
    key = frame.columns[0]
    images = np.stack([np.fromstring(p, dtype=np.int64, sep=" ") for p in frame["feature"]])
    assert images.min() >= 0 and images.max() <= 255
    return frame[key].astype(np.int64).to_numpy(), images.astype(np.uint8).reshape(-1, 48, 48)


def _raises(path, *fragments, reader=read_train):
    """Assert `reader(path)` raises FerKaggleError whose message names the path and every fragment."""
    with pytest.raises(FerKaggleError) as info:
        reader(path)
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        if isinstance(fragment, re.Pattern):
            assert fragment.search(message), (fragment.pattern, message)
        else:
            assert fragment in message, (fragment, message)
    return message


def _line(n):
    """`line N` as a whole word, so that `line 2` does not match `line 23`."""
    return re.compile(rf"\bline {n}\b")


def _with_row(lines, index, row):
    """`lines` with data row `index` (0 = first data row, on line 2) replaced by `row`."""
    out = list(lines)
    out[index + 1] = row
    return out


# ---------------------------------------------------------------- valid files

def _quoted(lines):
    return ['"' + '","'.join(line.split(",")) + '"' for line in lines]


VARIANTS = {
    "plain": ("train.csv", {}),
    "gzip": ("train.csv.gz", {}),
    "xz": ("train.csv.xz", {}),
    "crlf": ("train.csv", {"newline": "\r\n"}),
    "bom": ("train.csv", {"prefix": b"\xef\xbb\xbf"}),
    "no_final_newline": ("train.csv", {"trailing": False}),
    "crlf_gzip_bom": ("train.csv.gz", {"newline": "\r\n", "prefix": b"\xef\xbb\xbf"}),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_valid_train_matches_naive_reference(tmp_path, variant):
    name, options = VARIANTS[variant]
    path = _write(tmp_path / name, TRAIN_LINES, **options)
    images, labels = read_train(path)
    ref_labels, ref_images = _reference(path)
    assert images.dtype == np.uint8 and images.shape == (N_ROWS, 48, 48)
    assert labels.dtype == np.int64 and labels.shape == (N_ROWS,)
    np.testing.assert_array_equal(images, ref_images)
    np.testing.assert_array_equal(labels, ref_labels)


def test_valid_train_trailing_blank_line(tmp_path):
    path = _write(tmp_path / "train.csv", TRAIN_LINES + [""])
    assert path.read_bytes().endswith(b"\n\n")
    images, labels = read_train(path)
    ref_labels, ref_images = _reference(path)
    np.testing.assert_array_equal(images, ref_images)
    np.testing.assert_array_equal(labels, ref_labels)


def test_valid_train_quoted_fields(tmp_path):
    path = _write(tmp_path / "train.csv", _quoted(TRAIN_LINES))
    assert path.read_text().startswith('"label","feature"\n"')
    images, labels = read_train(path)
    ref_labels, ref_images = _reference(path)
    np.testing.assert_array_equal(images, ref_images)
    np.testing.assert_array_equal(labels, ref_labels)


def test_all_variants_give_identical_arrays(tmp_path):
    first = None
    for variant, (name, options) in sorted(VARIANTS.items()):
        folder = tmp_path / variant
        folder.mkdir()
        images, labels = read_train(_write(folder / name, TRAIN_LINES, **options))
        if first is None:
            first = images, labels
        np.testing.assert_array_equal(images, first[0])
        np.testing.assert_array_equal(labels, first[1])


def test_pixel_layout_is_row_major(tmp_path):
    row = "3," + " ".join(str(i % 256) for i in range(48 * 48))
    images, labels = read_train(_write(tmp_path / "train.csv", ["label,feature", row]))
    assert labels.tolist() == [3]
    assert images[0, 0, :3].tolist() == [0, 1, 2]
    assert images[0, 1, 0] == 48
    assert images[0, 47, 47] == (48 * 48 - 1) % 256


@pytest.mark.parametrize("suffix,compress", [(".gz", gzip.compress), (".xz", lzma.compress)])
def test_concatenated_compressed_streams_are_all_read(tmp_path, suffix, compress):
    """`cat a.gz b.gz` is one valid gzip file (likewise xz); gzip, lzma and pandas read every member."""
    head = ("\n".join(TRAIN_LINES[:3]) + "\n").encode()
    tail = ("\n".join(TRAIN_LINES[3:]) + "\n").encode()
    path = tmp_path / f"train.csv{suffix}"
    path.write_bytes(compress(head) + compress(tail))
    images, labels = read_train(path)
    ref_labels, ref_images = _reference(path)
    assert len(ref_labels) == N_ROWS
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(images, ref_images)


def test_read_test_returns_ids_in_file_order(tmp_path):
    # Reverse the real rows and renumber them so the ids are not sorted.
    rows = [line.split(",", 1)[1] for line in TEST_LINES[1:]]
    ids = [907, 3, 55, 1000, 12, 4][: len(rows)]
    lines = ["id,feature"] + [f"{i},{p}" for i, p in zip(ids, reversed(rows))]
    got_ids, images = read_test(_write(tmp_path / "test.csv.xz", lines))
    assert got_ids.dtype == np.int64 and got_ids.tolist() == ids
    assert images.dtype == np.uint8 and images.shape == (len(rows), 48, 48)
    for image, pixels in zip(images, reversed(rows)):
        np.testing.assert_array_equal(image.ravel(), np.array(pixels.split(), dtype=np.uint8))


def test_read_test_matches_naive_reference(tmp_path):
    path = _write(tmp_path / "test.csv", TEST_LINES, newline="\r\n", prefix=b"\xef\xbb\xbf")
    ids, images = read_test(path)
    ref_ids, ref_images = _reference(path)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(images, ref_images)


# ---------------------------------------------------------------- header errors

@pytest.mark.parametrize("header", ["feature", "label", "label,pixels", "label,feature,usage", "emotion,feature"])
def test_wrong_columns(tmp_path, header):
    """A header of no known form names what it found, the first row and every form tried."""
    lines = [header] + [line for line in TRAIN_LINES[1:]]
    message = _raises(_write(tmp_path / "train.csv", lines), _line(1), f"'{header}'", "'label,feature'",
                      "'emotion,pixels'", "'emotion,pixels,Usage'", "line 2 starts '0,")
    assert "swapped" not in message


def test_test_file_given_to_read_train(tmp_path):
    path = _write(tmp_path / "test.csv", TEST_LINES)
    _raises(path, _line(1), "'id,feature'", "'label,feature'", "swapped")


def test_train_file_given_to_read_test(tmp_path):
    path = _write(tmp_path / "train.csv", TRAIN_LINES)
    _raises(path, _line(1), "'label,feature'", "'id,feature'", "swapped", reader=read_test)


def test_binary_header(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"\x80\x81\xfe,\xff\n" + "\n".join(TRAIN_LINES[1:]).encode())
    _raises(path, _line(1), "label,feature")


# ---------------------------------------------------------------- row errors (train)

@pytest.mark.parametrize("count", [2303, 2305, 0])
def test_wrong_pixel_count(tmp_path, count):
    values = (PIXELS.split() * 2)[:count]
    path = _write(tmp_path / "train.csv", _with_row(TRAIN_LINES, 2, "1," + " ".join(values)))
    _raises(path, _line(4), "2304", f"found {count}")


@pytest.mark.parametrize("bad", ["12.5", "abc", "1e2", "0x1F", "1/2"])
def test_non_integer_pixel(tmp_path, bad):
    values = PIXELS.split()
    values[100] = bad
    row = "1," + " ".join(values)
    path = _write(tmp_path / "train.csv", _with_row(TRAIN_LINES, 0, row))
    _raises(path, _line(2), f"'{bad}'", "not an integer from 0 to 255")


@pytest.mark.parametrize("bad", ["256", "-3", "1000", "99999999999"])
def test_out_of_range_pixel(tmp_path, bad):
    values = PIXELS.split()
    values[-1] = bad
    path = _write(tmp_path / "train.csv", _with_row(TRAIN_LINES, N_ROWS - 1, "1," + " ".join(values)))
    _raises(path, _line(N_ROWS + 1), f"'{bad}'", "0 to 255")


def test_pixel_that_wraps_around_int32(tmp_path):
    values = PIXELS.split()
    values[0] = str(2**32 + 5)
    path = _write(tmp_path / "train.csv", _with_row(TRAIN_LINES, 0, "1," + " ".join(values)))
    _raises(path, _line(2), f"'{2**32 + 5}'", "0 to 255")


@pytest.mark.parametrize("bad", ["7", "-1", "100"])
def test_label_out_of_range(tmp_path, bad):
    path = _write(tmp_path / "train.csv", _with_row(TRAIN_LINES, 1, f"{bad},{PIXELS}"))
    _raises(path, _line(3), f"label {bad} is outside 0-6")


@pytest.mark.parametrize("bad", ["abc", "3.0", "1 2"])
def test_non_integer_label(tmp_path, bad):
    path = _write(tmp_path / "train.csv", _with_row(TRAIN_LINES, 1, f"{bad},{PIXELS}"))
    _raises(path, _line(3), f"label '{bad}' is not an integer")


def test_missing_label(tmp_path):
    path = _write(tmp_path / "train.csv", _with_row(TRAIN_LINES, 3, f",{PIXELS}"))
    _raises(path, _line(5), "label is missing")


@pytest.mark.parametrize("row", ["1,2 3,4", "1", f"1,{PIXELS},Training"])
def test_wrong_field_count(tmp_path, row):
    found = len(row.split(","))
    path = _write(tmp_path / "train.csv", _with_row(TRAIN_LINES, 1, row))
    _raises(path, _line(3), "expected 2 fields", f"found {found}")


def test_line_numbers_count_blank_lines(tmp_path):
    lines = TRAIN_LINES[:2] + ["", ""] + TRAIN_LINES[2:3] + [f"9,{PIXELS}"]
    path = _write(tmp_path / "train.csv", lines, newline="\r\n")
    _raises(path, _line(6), "label 9")


def test_error_in_compressed_file_names_line(tmp_path):
    path = _write(tmp_path / "train.csv.xz", _with_row(TRAIN_LINES, 4, f"8,{PIXELS}"))
    _raises(path, _line(6), "label 8 is outside 0-6")


# ---------------------------------------------------------------- row errors (test)

def test_missing_id(tmp_path):
    path = _write(tmp_path / "test.csv", _with_row(TEST_LINES, 2, f",{PIXELS}"))
    _raises(path, _line(4), "id is missing", reader=read_test)


@pytest.mark.parametrize("bad", ["x1", "1.5", "0x10"])
def test_non_integer_id(tmp_path, bad):
    path = _write(tmp_path / "test.csv", _with_row(TEST_LINES, 2, f"{bad},{PIXELS}"))
    _raises(path, _line(4), f"id '{bad}' is not an integer", reader=read_test)


def test_duplicate_id(tmp_path):
    first_id = TEST_LINES[2].split(",", 1)[0]
    path = _write(tmp_path / "test.csv", _with_row(TEST_LINES, 4, f"{first_id},{PIXELS}"))
    _raises(path, _line(6), _line(3), f"id {first_id}", "already appears", reader=read_test)


def test_bad_pixels_in_test_file(tmp_path):
    path = _write(tmp_path / "test.csv.gz", _with_row(TEST_LINES, 0, "5," + PIXELS + " 17"))
    _raises(path, _line(2), "found 2305", reader=read_test)


def test_test_label_range_not_applied_to_ids(tmp_path):
    lines = ["id,feature"] + [f"{1000 + i},{PIXELS}" for i in range(3)]
    ids, _ = read_test(_write(tmp_path / "test.csv", lines))
    assert ids.tolist() == [1000, 1001, 1002]


# ---------------------------------------------------------------- whole-file errors

@pytest.mark.parametrize("reader", [read_train, read_test])
def test_empty_file(tmp_path, reader):
    path = tmp_path / "data.csv"
    path.write_bytes(b"")
    _raises(path, "empty", reader=reader)


def test_empty_compressed_file(tmp_path):
    path = tmp_path / "train.csv.gz"
    path.write_bytes(gzip.compress(b""))
    _raises(path, "empty")


@pytest.mark.parametrize("name,newline", [("train.csv", "\n"), ("train.csv", "\r\n"), ("train.csv.xz", "\n")])
def test_header_only(tmp_path, name, newline):
    path = _write(tmp_path / name, ["label,feature"], newline=newline)
    _raises(path, "no data rows")


def test_header_only_test(tmp_path):
    path = _write(tmp_path / "test.csv", ["id,feature", "", ""])
    _raises(path, "no data rows", reader=read_test)


def test_missing_file(tmp_path):
    _raises(tmp_path / "nope" / "train.csv", "no such file")
    _raises(tmp_path / "test.csv.xz", "no such file", reader=read_test)


@pytest.mark.parametrize("missing", ["nope.csv", "folder"])
def test_load_missing_file(tmp_path, missing):
    (tmp_path / "folder").mkdir()
    _raises(tmp_path / missing, reader=lambda path: inputs.resolve([path, DEMO / "test.csv.xz"]))
    _raises(tmp_path / missing, reader=lambda path: inputs.resolve([DEMO / "train.csv.xz", path]))


def test_corrupt_xz(tmp_path):
    path = tmp_path / "train.csv.xz"
    path.write_bytes(b"\xfd7zXZ\x00" + b"this is not an xz stream at all " * 64)
    _raises(path, "corrupt or truncated xz")


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "train.csv.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00garbage" * 64)
    _raises(path, "corrupt or truncated gzip")


@pytest.mark.parametrize("suffix,kind", [(".xz", "xz"), (".gz", "gzip")])
def test_truncated_small_compressed_file(tmp_path, suffix, kind):
    whole = _write(tmp_path / f"whole.csv{suffix}", TRAIN_LINES).read_bytes()
    path = tmp_path / f"train.csv{suffix}"
    path.write_bytes(whole[: len(whole) // 2])
    _raises(path, f"corrupt or truncated {kind}")


@pytest.mark.parametrize("name", ["train.csv.xz", "test.csv.xz"])
def test_truncated_bundled_file(tmp_path, name):
    """Half of a real multi-megabyte download: the rows before the cut parse, then the cut is reported."""
    whole = (DEMO / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(whole[: len(whole) // 2])
    _raises(path, "corrupt or truncated xz", reader=read_train if name.startswith("train") else read_test)


def test_bundled_files_parse(tmp_path):
    images, labels = read_train(DEMO / "train.csv.xz")
    ids, test_images = read_test(DEMO / "test.csv.xz")
    assert images.shape == (2400, 48, 48) and labels.shape == (2400,)
    assert test_images.shape == (400, 48, 48) and len(np.unique(ids)) == 400
    assert set(np.unique(labels)) <= set(range(7))
    ref_labels, ref_images = _reference(DEMO / "train.csv.xz")
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(images, ref_images)


# ---------------------------------------------------------------- cache (inputs.load)

def _counting(monkeypatch, name):
    calls = []
    real = getattr(data, name)

    def wrapper(path, *args):
        calls.append(Path(path))
        return real(path, *args)

    monkeypatch.setattr(data, name, wrapper)
    return calls


def _load(train, test, cache):
    return inputs.load(inputs.resolve([train, test]), cache)[0]


def test_load_caches_by_fingerprint(tmp_path, monkeypatch):
    train = _write(tmp_path / "train.csv.gz", TRAIN_LINES)
    test = _write(tmp_path / "test.csv", TEST_LINES)
    cache = tmp_path / "cache"
    calls = _counting(monkeypatch, "read_train")

    first = _load(train, test, cache)
    assert calls == [train]
    entries = sorted(cache.iterdir())
    assert [p.name.split("-")[0] for p in entries] == ["test", "train"], entries
    expected_images, expected_labels = read_train(train)
    np.testing.assert_array_equal(first.train_images, expected_images)
    np.testing.assert_array_equal(first.train_labels, expected_labels)

    monkeypatch.setattr(data, "read_train", lambda *a: pytest.fail("read_train called again: cache unused"))
    monkeypatch.setattr(data, "read_test", lambda *a: pytest.fail("read_test called again: cache unused"))
    again = _load(train, test, cache)
    assert again.train_images.dtype == np.uint8 and again.train_images.shape == (N_ROWS, 48, 48)
    assert again.train_labels.dtype == np.int64 and again.test_ids.dtype == np.int64
    np.testing.assert_array_equal(again.train_images, expected_images)
    np.testing.assert_array_equal(again.train_labels, expected_labels)
    np.testing.assert_array_equal(again.test_ids, first.test_ids)
    np.testing.assert_array_equal(again.test_images, first.test_images)
    assert again.test_labels is None and again.train_fingerprint == first.train_fingerprint
    assert sorted(cache.iterdir()) == entries

    # Different bytes at the same path: a new entry, parsed afresh.
    monkeypatch.undo()
    calls = _counting(monkeypatch, "read_train")
    _write(train, _with_row(TRAIN_LINES, 0, f"6,{PIXELS}"))
    changed = _load(train, test, cache)
    assert len(calls) == 1
    assert changed.train_labels[0] == 6 and changed.train_labels.tolist()[1:] == expected_labels.tolist()[1:]
    assert changed.train_fingerprint != first.train_fingerprint
    assert set(entries) < set(cache.iterdir())


def test_invalid_file_leaves_no_cache_entry(tmp_path):
    train = _write(tmp_path / "train.csv", _with_row(TRAIN_LINES, 0, f"7,{PIXELS}"))
    cache = tmp_path / "cache"
    with pytest.raises(FerKaggleError):
        _load(train, _write(tmp_path / "test.csv", TEST_LINES), cache)
    assert not cache.exists() or not any(cache.iterdir())


def test_early_error_in_a_large_file_leaves_no_thread_behind(tmp_path):
    """The decompressing thread must stop when the reader stops at a bad row, not block forever."""
    import threading
    import time

    rows = [TRAIN_LINES[1]] * 4000  # about 36 MB: far more than the reader's queue holds
    rows[1] = "9," + rows[1].split(",", 1)[1]
    path = _write(tmp_path / "big.csv", ["label,feature"] + rows)
    before = threading.active_count()
    with pytest.raises(FerKaggleError, match="line 3"):
        read_train(path)
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before
