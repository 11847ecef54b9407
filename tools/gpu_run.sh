#!/usr/bin/env bash
# The few GPU minutes go to measuring, not setting up (issue 12). Three steps:
#
#   bash tools/gpu_run.sh prepare          HERE (a connected machine, in the project root): cp312 wheels of
#                                          what the GPU image lacks -> .gpu/wheels; the real data, the train
#                                          file split in two so that each call stays under 64 MiB ->
#                                          .gpu/data1 (test file, first half), .gpu/data2 (second half)
#   bash tools/gpu_run.sh selfcheck OUT    ON THE GPU (first call; carry .gpu/wheels and .gpu/data1): set up
#                                          from the wheels with no index, then `bench gpu` -> OUT/selfcheck.log
#   bash tools/gpu_run.sh fast OUT         ON THE GPU (second call, machine still warm; carry .gpu/data2):
#                                          join and check the train file, then the whole `fast` run under
#                                          `bench tree` -> OUT/fast.log, OUT/out.csv, OUT/ensemble.json
#
# The GPU image (device/KINDS.md) has Python 3.12, torch, torchvision, timm, pandas, scikit-learn, scipy,
# opencv, onnx, matplotlib and tqdm; it lacks albumentations and its dependencies, captum and torchinfo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TRAIN_SHA=615601d443ca0b065365232bdffe4ccbbee163de49dcd485f7bb1417c1c78edb
WHEELS="albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
        typing-inspection==0.4.5 stringzilla==5.3.2 simsimd==6.5.16 captum==0.9.0 torchinfo==1.8.0"

prepare() {
  local data="${1:-../shared/fer2013}"
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  mkdir -p .gpu/wheels .gpu/data1 .gpu/data2
  local platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux1_x86_64 any; do platforms+=(--platform "$p"); done
  for wheel in $WHEELS; do
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${platforms[@]}" -d .gpu/wheels "$wheel"
  done
  echo "$TRAIN_SHA  $data/train.csv.xz" | sha256sum -c --quiet
  cp "$data/test.csv.xz" .gpu/data1/
  split -b 30M "$data/train.csv.xz" .gpu/train.csv.xz.part-
  mv .gpu/train.csv.xz.part-aa .gpu/data1/ && mv .gpu/train.csv.xz.part-ab .gpu/data2/
  du -sh .gpu/wheels .gpu/data1 .gpu/data2
}

selfcheck() {
  local out="$1"; mkdir -p "$out"
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
  FER_KAGGLE_WHEELS=.gpu/wheels PIP_NO_INDEX=1 bash run.sh --help > "$out/setup.log" 2>&1
  bash run.sh bench gpu 2>&1 | tee "$out/selfcheck.log"
}

fast() {
  local out="$1"; mkdir -p "$out"
  cat .gpu/data1/train.csv.xz.part-aa .gpu/data2/train.csv.xz.part-ab > .gpu/train.csv.xz
  echo "$TRAIN_SHA  .gpu/train.csv.xz" | sha256sum -c --quiet
  .venv/bin/python -m fer_kaggle.bench tree -- bash run.sh .gpu/train.csv.xz .gpu/data1/test.csv.xz \
    "$out/out.csv" --preset fast --workdir .gpu/run 2>&1 | tee "$out/fast.log"
  cp .gpu/run/ensemble.json .gpu/run/shift.json "$out/" 2>/dev/null || true
}

case "${1:-}" in
  prepare) prepare "${2:-}" ;;
  selfcheck) selfcheck "${2:?give the output folder, e.g. \$OUT}" ;;
  fast) fast "${2:?give the output folder, e.g. \$OUT}" ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
