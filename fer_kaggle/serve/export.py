"""Export a finished run's ensemble (or one unit) as one ONNX graph: pixels in, probabilities out.

    python -m fer_kaggle.export --run folds/ --out model.onnx [--unit NAME] [--input uint8|float32]
                                [--tta none|flip|flip_shift] [--opset N] [--bench]

The graph is inference.load_ensemble's module: input "pixels" (N x 1 x 48 x 48, 0-255, uint8
or float32), output "probs" (N x 7, the classes of fer_kaggle.CLASS_NAMES), N free. Resize,
normalisation, TTA views and the blend are inside, so a caller (onnxruntime in C++, C#, Java,
the browser) only has to hand it grayscale 48x48 faces.

The file is checked with onnx.checker and run once with onnxruntime against PyTorch on a few of
the run's test images before it is moved into place; `--bench` then times both on the CPU.
"""
import inspect
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from fer_kaggle.core.atomic import atomic_path, require_folder
from fer_kaggle.data.competition import read_test
from fer_kaggle.core.errors import FerKaggleError
from fer_kaggle.serve.inference import MODELS, load_ensemble
from fer_kaggle.data.inputs import DEMO_TEST
from fer_kaggle.core.runfolder import RunFolder
from fer_kaggle.models.tta import TTA_CHOICES

INPUT_NAME, OUTPUT_NAME = "pixels", "probs"
INPUT_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}
PARITY_TOLERANCE = 1e-4  # float32 kernels differ in summation order; probabilities agree far closer
BENCH_BATCH, BENCH_IMAGES, BENCH_REPEATS = 256, 512, 5


def _has_dynamo_exporter():
    """Whether this torch's torch.onnx.export takes dynamo= and external_data= (torch >= 2.6)."""
    params = inspect.signature(torch.onnx.export).parameters
    return "dynamo" in params and "external_data" in params


def _export_graph(module, example, path, opset):
    """Write the ONNX graph of `module` to `path`; returns the exporter's name.

    The torch.export-based exporter (dynamo=True, with onnxscript) first: it is torch's default
    from 2.9 on and the TorchScript exporter is deprecated there. It needs the `dynamo` and
    `external_data` keywords (torch >= 2.6); external_data=False keeps the weights inside the one
    .onnx file (torch 2.14's default would write them to a separate .data file). On an older torch
    (setup.cfg allows 2.4), or if torch.export cannot trace a backbone, the TorchScript exporter
    (dynamo=False), which handles these plain CNNs too; the parity check then vouches for either.
    """
    if _has_dynamo_exporter():
        try:
            torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=opset, dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}})
            return "torch.export (dynamo=True)"
        except Exception as exc:  # noqa: BLE001 -- reported, then the other exporter; its failure is raised
            print(f"note: the torch.export-based exporter failed ({type(exc).__name__}: {str(exc)[:300]}); "
                  f"using the TorchScript exporter", file=sys.stderr)
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      opset_version=opset or 17, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                      **legacy)
    return "TorchScript (dynamo=False)"


def run_images(workdir, count=None):
    """(images, where from): the run's cached test images, or the bundled FER2013 test sample."""
    found = RunFolder(workdir).test_images()
    if found is not None:
        images, cache = found
        return images[:count], f"the run's test file ({cache})"
    _, images = read_test(DEMO_TEST)
    return images[:count], "the bundled FER2013 test sample"


def session(path):
    """An onnxruntime session on the CPU for the exported file."""
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def max_difference(module, path, images, dtype):
    """Largest |onnxruntime - PyTorch| over the probabilities of `images` (N, 48, 48)."""
    pixels = images[:, None].astype(dtype)
    ours = session(path).run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]
    with torch.inference_mode():
        reference = module(torch.as_tensor(pixels)).numpy()
    return float(np.abs(ours - reference).max())


def _check_out(out):
    if out.is_dir():
        raise FerKaggleError(f"{out}: is a folder; give the path of the .onnx file to write")
    require_folder(out)


def export(workdir, out, unit=None, input_dtype="float32", tta=None, opset=None, model="ensemble"):
    """Export, check, compare with PyTorch, then move into place; returns a summary dict."""
    out = Path(out)
    _check_out(out)
    module = load_ensemble(workdir, unit=unit, tta=tta, model=model)
    example = torch.zeros(2, 1, 48, 48, dtype=INPUT_DTYPES[input_dtype])
    images, source = run_images(workdir, count=16)
    with atomic_path(out) as tmp:
        exporter = _export_graph(module, example, tmp, opset)
        graph = onnx.load(str(tmp))
        onnx.checker.check_model(graph, full_check=True)
        difference = max_difference(module, tmp, images, input_dtype)
        if not difference <= PARITY_TOLERANCE:
            raise FerKaggleError(f"{out}: not written: onnxruntime's probabilities differ from PyTorch's by "
                                 f"{difference:.2e} (more than {PARITY_TOLERANCE}); try another --opset")
    return {"out": out, "bytes": out.stat().st_size, "exporter": exporter, "units": module.names,
            "opset": next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
            "difference": difference, "parity_images": len(images), "parity_source": source, "module": module}


def _images_per_second(predict, images, batch_size, repeats):
    """Median images/s of `predict` over `repeats` passes through `images` in batches (one warm-up pass)."""
    seconds = []
    for repeat in range(repeats + 1):
        started = time.perf_counter()
        for start in range(0, len(images), batch_size):
            predict(images[start:start + batch_size])
        if repeat:
            seconds.append(time.perf_counter() - started)
    return len(images) / statistics.median(seconds), len(images) / max(seconds), len(images) / min(seconds)


def benchmark(module, path, images, dtype, batch_size=BENCH_BATCH, repeats=BENCH_REPEATS):
    """{"pytorch"|"onnxruntime": (median, slowest, fastest) images/s} on this CPU, same images and batches."""
    pixels = images[:, None].astype(dtype)
    ort_session = session(path)

    def with_torch(batch):
        with torch.inference_mode():
            return module(torch.as_tensor(batch))

    return {"pytorch": _images_per_second(with_torch, pixels, batch_size, repeats),
            "onnxruntime": _images_per_second(lambda b: ort_session.run([OUTPUT_NAME], {INPUT_NAME: b}),
                                              pixels, batch_size, repeats)}


def print_benchmark(result, count, batch_size, repeats):
    print(f"CPU inference, {count} images in batches of {batch_size}, median of {repeats} runs "
          f"(torch {torch.__version__} on {torch.get_num_threads()} threads, onnxruntime {onnxruntime.__version__}):")
    for name, (median, slow, fast) in result.items():
        print(f"  {name:<12} {median:>9,.0f} images/s  (range {slow:,.0f}-{fast:,.0f})")
    print(f"  onnxruntime / pytorch: {result['onnxruntime'][0] / result['pytorch'][0]:.2f}x")


def add_arguments(parser):
    parser.add_argument("--workdir", "--run", dest="workdir", type=Path, help="the finished run folder "
                        "(default: folds or folds/demo, the one finished last)")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--model", choices=MODELS, default="ensemble", help="the run's kept ensemble, or the small "
                        "student that python -m fer_kaggle.distill made of it (its folds' mean)")
    parser.add_argument("--unit", help="export one unit, e.g. round0/fer_vgg_tiny/fold1, instead of the ensemble")
    parser.add_argument("--input", choices=list(INPUT_DTYPES), default="float32",
                        help="dtype of the 0-255 pixels the graph takes (default float32: what most "
                             "runtimes' tensor APIs build most easily; uint8 is 4x less to copy)")
    parser.add_argument("--tta", choices=TTA_CHOICES,
                        help="TTA views inside the graph (default: each unit's own, as the run predicted)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's own)")
    parser.add_argument("--bench", action="store_true",
                        help=f"then time PyTorch and onnxruntime on {BENCH_IMAGES} images (batch {BENCH_BATCH})")


def command(args):
    """`fer-kaggle export` (cli.py has found args.workdir)."""
    summary = export(args.workdir, args.out, args.unit, args.input, args.tta, args.opset, args.model)
    print(f"wrote {summary['out']} ({summary['bytes'] / 1e6:.1f} MB, opset {summary['opset']}, "
          f"{summary['exporter']}): {len(summary['units'])} unit(s), input {INPUT_NAME} N x 1 x 48 x 48 "
          f"{args.input} 0-255, output {OUTPUT_NAME} N x 7")
    print(f"parity: onnxruntime vs PyTorch on {summary['parity_images']} images from "
          f"{summary['parity_source']}: max abs difference {summary['difference']:.2e}")
    if args.bench:
        images, _ = run_images(args.workdir)
        images = np.resize(images, (BENCH_IMAGES, 48, 48))  # repeats the images if the run has fewer
        result = benchmark(summary["module"], summary["out"], images, args.input)
        print_benchmark(result, BENCH_IMAGES, BENCH_BATCH, BENCH_REPEATS)
    return 0
