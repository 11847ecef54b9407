"""The submission file: id,label, test order, labels 0-6, atomic."""
import numpy as np
import pytest

from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.blend.submit import read_submission, write_submission


def test_round_trip_keeps_order(tmp_path):
    ids = np.array([5, 2, 9, 0])
    labels = np.array([3, 0, 6, 1])
    write_submission(tmp_path / "s.csv", ids, labels)
    assert (tmp_path / "s.csv").read_text().splitlines() == ["id,label", "5,3", "2,0", "9,6", "0,1"]
    frame = read_submission(tmp_path / "s.csv")
    assert frame["id"].tolist() == ids.tolist()
    assert list(tmp_path.iterdir()) == [tmp_path / "s.csv"], "a temporary file was left behind"


@pytest.mark.parametrize("ids, labels", [([1, 1], [0, 0]), ([1, 2], [0, 7]), ([1, 2], [0.5, 1]), ([1, 2], [0])])
def test_invalid_submission_is_not_written(tmp_path, ids, labels):
    with pytest.raises(ValueError):
        write_submission(tmp_path / "s.csv", np.array(ids), np.array(labels))
    assert not (tmp_path / "s.csv").exists()


def test_read_submission_checks_header(tmp_path):
    (tmp_path / "bad.csv").write_text("Id,Prediction\n1,2\n")
    with pytest.raises(FerKaggleError, match="columns"):
        read_submission(tmp_path / "bad.csv")


def test_string_ids_round_trip(tmp_path):
    """Image-folder runs: ids are paths relative to the test folder, commas included."""
    ids = np.array(["happy/0001.png", "b,c.jpg", "0002.png"])
    write_submission(tmp_path / "s.csv", ids, np.array([3, 0, 6]))
    frame = read_submission(tmp_path / "s.csv")
    assert frame["id"].tolist() == ids.tolist() and frame["label"].tolist() == [3, 0, 6]


def test_out_path_refuses_to_overwrite_data(tmp_path):
    from fer_kaggle.blend.submit import check_out_path
    data = tmp_path / "test.csv"
    data.write_text("id,feature\n1,0 0 0\n")
    with pytest.raises(FerKaggleError, match=r"test.csv: exists and is not a submission.*'id,feature'"):
        check_out_path(data)
    previous = tmp_path / "out.csv"
    write_submission(previous, np.array([1]), np.array([2]))
    check_out_path(previous)  # an earlier submission may be replaced
