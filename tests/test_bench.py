"""The benchmarks print their tables with real figures (the figures themselves are not asserted:
speed is checked by reading the bench, never by timed tests)."""
import re

import pytest

from fer_kaggle import cli
from fer_kaggle.bench import benchmarks as bench
from fer_kaggle.bench import speed
from fer_kaggle.data.inputs import DEMO_TRAIN

NUMBER = r"[\d,]+(?:\.\d+)?"


def test_train_bench_prints_a_row_per_backbone(capsys):
    assert cli.main(["bench", "train", "--preset", "demo", "--steps", "1", "--device", "cpu", "--amp", "off",
                     "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "host" in out and "device" in out and "synthetic" in out and "epoch s" in out
    assert "amp off" in out and "float32 matmul" in out, "timed in float32, as on a CPU without native bf16"
    peak = float(re.search(rf"matmul runs at ({NUMBER}) GFLOP/s", out).group(1).replace(",", ""))
    assert peak > 0
    flops = {}
    for backbone in ("fer_vgg_tiny", "fer_resnet_tiny"):
        row = re.search(rf"^{backbone}\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+2\s+"
                        rf"({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})-({NUMBER})$", out,
                        re.MULTILINE)
        assert row, out
        host, device, synthetic, ratio, infer, epoch, mflop, gflops, share, low, high = (
            float(v.replace(",", "")) for v in row.groups())
        assert low <= share + 0.005 and share <= high + 0.005, "the median of two timings lies in their range"
        assert min(host, device, synthetic, infer) > 0
        assert abs(ratio - max(host, device) / synthetic) < 0.01 + 0.01 * ratio
        assert epoch > 0
        assert abs(gflops - mflop * max(host, device) / 1e3) <= 1 + 0.01 * gflops
        assert abs(share - gflops / peak) <= 0.01 + 0.01 * share
        flops[backbone] = mflop
    # forward + backward of the model at 48 px: the VGG's stride-1 stem costs more than the ResNet's stride-2 one
    assert 100 < flops["fer_vgg_tiny"] < 300 and 20 < flops["fer_resnet_tiny"] < flops["fer_vgg_tiny"]


def test_recipe_bench_trains_each_variant_once(tmp_path, capsys):
    args = ["recipe", str(DEMO_TRAIN), "--epochs", "1", "--rows", "300", "--workdir", str(tmp_path),
            "--variants", "base,EMA 0.999", "--device", "cpu"]
    assert cli.main(["bench", *args]) == 0
    out = capsys.readouterr().out
    rows = re.findall(rf"^(base|EMA 0\.999)\s+({NUMBER})\s+([+-]{NUMBER})", out, re.MULTILINE)
    assert [name for name, *_ in rows] == ["base", "EMA 0.999"] and rows[0][2] == "+0.0000"
    assert sorted(p.name for p in (tmp_path / "ablation").iterdir()) == ["recipe_EMA_0.999", "recipe_base"]
    assert cli.main(["bench", *args]) == 0, "a re-run reads the finished units"
    assert capsys.readouterr().out.count("epoch 1/1") == 0


@pytest.mark.slow  # a subprocess tree
def test_tree_counts_every_process_of_the_tree(tmp_path, capsys):
    """Two grandchildren holding 200 MB each at once: the tree's peak is their sum, not one process's."""
    import sys
    # Each holds its block until both hold theirs, then 3 s more: on a busy machine the second may start
    # seconds after the first, and a fixed hold could leave them no time together to be sampled in.
    ready = tmp_path / "ready"
    ready.mkdir()
    hold = tmp_path / "hold.py"
    hold.write_text("import os, pathlib, time\n"
                    "block = bytearray(200_000_000)\n"
                    f"ready = pathlib.Path({str(ready)!r})\n"
                    "(ready / str(os.getpid())).touch()\n"
                    "while len(list(ready.iterdir())) < 2:\n"
                    "    time.sleep(0.05)\n"
                    "time.sleep(3)\n")
    command = ["bash", "-c", f"'{sys.executable}' '{hold}' & '{sys.executable}' '{hold}'; wait"]
    assert cli.main(["bench", "tree", "--", *command]) == 0
    out = capsys.readouterr().out
    peak = float(re.search(r"process tree ([\d.]+) GiB PSS", out).group(1))
    assert peak >= 0.36, out


def test_recipe_set_changes_the_base_with_the_fields_types():
    import argparse

    import pytest
    assert bench.parse_setting("batch_size=128") == ("batch_size", 128)
    assert bench.parse_setting("lr=0.1") == ("lr", 0.1)
    assert bench.parse_setting("augment-on=device") == ("augment_on", "device")
    assert bench.parse_setting("backbones=fer_vgg_cpu,fer_resnet_cpu") == ("backbones", ("fer_vgg_cpu",
                                                                                         "fer_resnet_cpu"))
    assert bench.parse_setting("pseudo=false") == ("pseudo", False)
    for bad in ("no_such_field=1", "epochs", "epochs="):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_setting(bad)


def test_augment_bench_times_both_paths(capsys):
    albumentations, batched = speed.bench_augment(n=256, batch=128)
    assert albumentations > 0 and batched > 0
    assert "full augmentation, 256 images: albumentations" in capsys.readouterr().out


def test_table_bench_measures_a_recipe_as_an_arm_the_planner_reads(tmp_path, capsys):
    """`bench table --recipe light --set augment=light` writes the arm `backbone:light`, the planner's to weigh
    beside the preset's own recipe."""
    from fer_kaggle.run.budget import Table
    out = tmp_path / "table.json"
    common = ["bench", "table", str(DEMO_TRAIN), "--preset", "demo", "--backbones", "fer_resnet_tiny", "--epochs", "1",
              "--device", "cpu", "--workdir", str(tmp_path / "units"), "--out", str(out)]
    assert cli.main([*common, "--recipe", "light", "--set", "augment=light"]) == 0
    printed = capsys.readouterr().out
    assert re.search(rf"^fer_resnet_tiny:light\s+1 epochs\s+OOF ({NUMBER})", printed, re.MULTILINE), printed
    table = Table.for_preset("demo", out)
    assert set(table.models) == {"fer_resnet_tiny:light"} and table.models["fer_resnet_tiny:light"][1] > 1 / 7
    assert table.arms(("fer_resnet_tiny",)) == {"fer_resnet_tiny": ("fer_resnet_tiny", {}),
                                                "fer_resnet_tiny:light": ("fer_resnet_tiny", {"augment": "light"})}
    assert table.arms(("fer_resnet_tiny",), explicit={"augment"}) == {"fer_resnet_tiny": ("fer_resnet_tiny", {})}
    assert "--recipe light --set augment=light" in table.entry["commands"][-1]
    # the demo's flip TTA: what predicting with the plain image alone lost, for the planner to weigh
    [lost] = table.tta_losses
    assert (lost["arm"], lost["epochs"], lost["of"]) == ("fer_resnet_tiny:light", 1, 2) and set(lost["views"]) == {"1"}
    assert table.views_loss(1) == lost["views"]["1"] and -1 < table.views_loss(1) < 1
    assert re.search(r"OOF lost with fewer TTA views: 1 of 2: [+-]\d", printed), printed
    assert cli.main([*common, "--recipe", "light", "--set", "augment=none"]) == 2
    assert "name this recipe otherwise" in capsys.readouterr().err
    assert Table.for_preset("demo", out).settings["fer_resnet_tiny:light"] == {"augment": "light"}, "left as it was"
