#!/usr/bin/env bash
# fer_kaggle: the whole FER2013 competition run in one command.
#
#   bash run.sh train.csv test.csv out.csv [options]   train, predict, ensemble, write out.csv
#   bash run.sh                                        the same on the bundled demo sample (CPU, minutes)
#   bash run.sh test [pytest options]                  the test suite (always: a data folder named test
#                                                      is given as ./test)
#   bash run.sh ensemble|report|predict|export|bench   the other commands (= fer-kaggle COMMAND)
#   bash run.sh --help                                 the commands; bash run.sh run --help: every option
#
# On first use it creates .venv/ beside this script and installs the package there: reusing the torch of
# the python3 that starts it when it works, installing only what is missing, from FER_KAGGLE_WHEELS=DIR
# (a folder of wheels) without any index when that folder and python3 hold everything needed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$root/.venv"
python="$venv/bin/python"

need_disk() {  # $1: the folder .venv/ goes in
  # A venv with PyPI's CUDA torch is 6.5 GB and its install took 6.8 GB at the peak (BENCHMARKS.md). pip out of
  # space stops half-way with a bare "No space left on device": say it first, before anything is written.
  local need_gb=7 free_gb
  free_gb=$(df -P -k "$1" | awk 'NR == 2 {print int($4 / 1024 / 1024)}')
  if [ "$free_gb" -lt "$need_gb" ]; then
    echo "error: installing torch into $venv needs about $need_gb GB free on its disk; $1 has $free_gb GB." >&2
    echo "Free some space, or run with a python3 whose torch and torchvision work: run.sh reuses them." >&2
    exit 1
  fi
}

setup() {  # $1: the modules that must be installed (space-separated), $2: what to install
  # Found without importing them (seconds saved on every start); checked from / so that the source folder on
  # sys.path does not pass for an installed package.
  if [ -x "$python" ] && (cd / && "$python" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" $1 2>/dev/null); then return; fi
  echo "setting up $venv (one time)" >&2
  if [ ! -x "$python" ]; then
    # A Python whose torch works (with its torchvision: a CPU-only local torch can fail beside PyPI's
    # torchvision) is reused, with whatever else it has: a GPU notebook's CUDA torch is not downloaded again.
    if (cd / && python3 -c "import torch, torchvision" 2>/dev/null); then
      echo "reusing the packages of $(command -v python3) (torch $(cd / && python3 -c 'import torch; print(torch.__version__)'))" >&2
      # A .pth file puts that Python's site-packages after the venv's own (--system-site-packages would reach
      # only the interpreter a venv was made from: not the packages of a python3 that is itself a venv, as
      # on the GPU images). No pip or setuptools of the venv's own: that Python's, newer, build the package.
      python3 -m venv --without-pip "$venv"
      (cd / && python3 -c "import site; print('\n'.join(site.getsitepackages()))") \
        > "$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_reused_python3.pth"
      "$python" -m pip --version >/dev/null 2>&1 || "$python" -m ensurepip --upgrade >/dev/null
    else
      need_disk "$root"
      echo "(installing torch too: a few minutes, several GB)" >&2
      python3 -m venv "$venv"
    fi
  fi
  local wheels=()
  if [ -n "${FER_KAGGLE_WHEELS:-}" ]; then wheels=(--find-links "$FER_KAGGLE_WHEELS"); fi
  # First with no index at all: enough when everything is already here or in $FER_KAGGLE_WHEELS
  # (an offline machine); only what is missing is installed.
  if "$python" -m pip install --quiet --no-index ${wheels[@]+"${wheels[@]}"} --no-build-isolation --editable "$2" 2>/dev/null; then
    return
  fi
  "$python" -m pip install --quiet ${wheels[@]+"${wheels[@]}"} --editable "$2"
}

# The optional extras' modules (setup.cfg): the report's and ONNX export's. The base install trains and submits;
# run.sh installs the extras too, so every command works.
extras="matplotlib captum torchinfo onnx onnxscript onnxruntime"

if [ "${1:-}" = "test" ]; then
  shift
  setup "fer_kaggle $extras pytest xdist ray skimage" "$root[report,serve,test]"
  cd "$root"
  exec "$python" -m pytest "$@"
fi

setup "fer_kaggle $extras" "$root[report,serve]"
# Run folders default to this project's folds/ and submissions/, wherever run.sh is called from.
export FER_KAGGLE_HOME="$root"
exec "$python" -m fer_kaggle "$@"
