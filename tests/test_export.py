"""ONNX export of a finished run: onnxruntime gives PyTorch's probabilities on real FER2013 rows."""
import contextlib
import io

import numpy as np
import onnx
import pytest
import torch

from fer_kaggle import cli
from fer_kaggle.serve import export
from fer_kaggle.serve.inference import load_ensemble

pytestmark = pytest.mark.slow  # every test here runs a whole pipeline or reads one

UNIT = "round0/fer_vgg_tiny/fold1"


def _cli(*argv):
    """(exit status, stdout, stderr) of `python -m fer_kaggle.export ARGV`, in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["export", *map(str, argv)])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def exported(finished_run, tmp_path_factory):
    """{name: (path, input dtype, cli stdout)}: the ensemble for both input dtypes, and one unit."""
    workdir, _ = finished_run
    out = tmp_path_factory.mktemp("onnx")
    files = {}
    for name, extra, dtype in (("ensemble_uint8", [], "uint8"), ("ensemble_float32", [], "float32"),
                               ("unit", ["--unit", UNIT, "--tta", "flip_shift"], "float32")):
        path = out / f"{name}.onnx"
        status, stdout, stderr = _cli("--run", workdir, "--out", path, "--input", dtype, *extra)
        assert status == 0, stderr
        files[name] = (path, dtype, stdout)
    return files


def _rows(demo_train, count):
    """Real FER2013 train rows the fixture run never trained on (it used rows 0-299)."""
    return demo_train[0][2000:2000 + count]


def _onnx_probs(path, images, dtype):
    return export.session(path).run(["probs"], {"pixels": images[:, None].astype(dtype)})[0]


def _torch_probs(module, images, dtype):
    with torch.inference_mode():
        return module(torch.as_tensor(images[:, None].astype(dtype))).numpy()


@pytest.mark.parametrize("name", ["ensemble_uint8", "ensemble_float32"])
def test_onnxruntime_equals_pytorch_for_both_input_dtypes_and_any_batch(finished_run, exported, demo_train, name):
    path, dtype, _ = exported[name]
    module = load_ensemble(finished_run[0])
    for count in (1, 37):
        images = _rows(demo_train, count)
        ours = _onnx_probs(path, images, dtype)
        assert ours.shape == (count, 7) and ours.dtype == np.float32
        assert np.abs(ours - _torch_probs(module, images, dtype)).max() < 1e-4
        assert np.allclose(ours.sum(1), 1, atol=1e-5)


def test_onnx_ensemble_equals_the_runs_saved_test_blend(finished_run, finished_run_blend, exported):
    """The number a user checks: the .onnx file predicts the run's test file as the run itself did."""
    _, test_images = finished_run
    path, dtype, _ = exported["ensemble_uint8"]
    assert np.abs(_onnx_probs(path, test_images, dtype) - finished_run_blend).max() < 1e-4


def test_one_unit_with_its_own_tta_override(finished_run, exported, demo_train):
    path, dtype, stdout = exported["unit"]
    module = load_ensemble(finished_run[0], unit=UNIT, tta="flip_shift")
    images = _rows(demo_train, 37)
    assert np.abs(_onnx_probs(path, images, dtype) - _torch_probs(module, images, dtype)).max() < 1e-4
    plain = load_ensemble(finished_run[0], unit=UNIT, tta="none")
    assert np.abs(_onnx_probs(path, images, dtype) - _torch_probs(plain, images, dtype)).max() > 1e-4
    assert "1 unit(s)" in stdout


@pytest.mark.parametrize("name,elem_type", [("ensemble_uint8", onnx.TensorProto.UINT8),
                                            ("ensemble_float32", onnx.TensorProto.FLOAT)])
def test_graph_is_valid_with_named_input_output_and_a_free_batch(finished_run, exported, name, elem_type):
    path, _, stdout = exported[name]
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    (pixels,), (probs,) = graph.graph.input, graph.graph.output
    assert (pixels.name, probs.name) == ("pixels", "probs")
    assert pixels.type.tensor_type.elem_type == elem_type
    dims = pixels.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [1, 48, 48]
    assert list(path.parent.glob("*.tmp-*")) == [] and list(path.parent.glob("*.data")) == []
    assert f"wrote {path} (" in stdout and f"{len(load_ensemble(finished_run[0]).names)} unit(s)" in stdout
    assert "max abs difference" in stdout


def test_no_run_is_exit_2_and_writes_nothing(tmp_path):
    out = tmp_path / "model.onnx"
    status, stdout, stderr = _cli("--run", tmp_path / "nothing", "--out", out)
    assert status == 2 and stdout == ""
    assert stderr.startswith("error: ") and f"{tmp_path / 'nothing'}: no run here" in stderr
    assert list(tmp_path.iterdir()) == []


def test_unknown_unit_is_exit_2_naming_the_available_ones(finished_run, tmp_path):
    status, _, stderr = _cli("--run", finished_run[0], "--out", tmp_path / "m.onnx", "--unit", "round0/x/fold0")
    assert status == 2 and "no unit 'round0/x/fold0'" in stderr and UNIT in stderr
    assert list(tmp_path.iterdir()) == []


def test_benchmark_times_both_runtimes(finished_run, exported, demo_train):
    path, dtype, _ = exported["ensemble_uint8"]
    result = export.benchmark(load_ensemble(finished_run[0]), path, _rows(demo_train, 40), dtype,
                              batch_size=16, repeats=2)
    assert set(result) == {"pytorch", "onnxruntime"}
    for median, slowest, fastest in result.values():
        assert 0 < slowest <= median <= fastest
