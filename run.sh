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
# On first use it creates .venv/ beside this script and installs the package there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$root/.venv"
python="$venv/bin/python"

setup() {  # $1: what must import, $2: what to install
  # checked from / so that the source folder on sys.path does not pass for an installed package
  if [ -x "$python" ] && (cd / && "$python" -c "import $1" 2>/dev/null); then return; fi
  echo "setting up $venv (one time: a few minutes, several GB with torch)" >&2
  [ -x "$python" ] || python3 -m venv "$venv"
  "$python" -m pip install --quiet --editable "$2"
}

if [ "${1:-}" = "test" ]; then
  shift
  setup "fer_kaggle, pytest" "$root[test]"
  cd "$root"
  exec "$python" -m pytest "$@"
fi

setup fer_kaggle "$root"
# Run folders default to this project's folds/ and submissions/, wherever run.sh is called from.
export FER_KAGGLE_HOME="$root"
exec "$python" -m fer_kaggle "$@"
