#!/usr/bin/env bash
# Units per hour of the cpu preset's round 0 (full train file, both backbones, 3 folds: 6 units), run one
# way after another: sequential (one unit, both threads), the local pool (2 units, 1 thread each), and
# Ray on a local instance (its default: as many threads as the sequential loop; and 1 thread per unit).
#
#   bash tools/bench_executors.sh TRAIN TEST OUTDIR [run options, e.g. --epochs 5]
#
# Each run's output, each line time-stamped, goes to OUTDIR/<name>.log; the table to stdout. The round's
# wall time is from its "round0: ..." line to its last unit line. Then the probability files of runs
# with the same threads per unit are compared byte for byte.
set -euo pipefail
train="$1" test="$2" out="$3"; shift 3
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$root/.venv/bin/python"
mkdir -p "$out"
export RAY_USAGE_STATS_ENABLED=0
stamp() { "$python" -u -c 'import sys, time
t0 = time.time()
for line in sys.stdin:
    print(f"{time.time() - t0:9.1f} {line}", end="", flush=True)'; }
declare -A runs=(
  [sequential]="--executor local"
  [pool_2x1]="--executor local --parallel-units 2"
  [ray_default]="--executor ray"
  [ray_2x1]="--executor ray --unit-threads 1"
)
for name in sequential pool_2x1 ray_default ray_2x1; do
  echo "$(date -u +%FT%TZ) $name: load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  mkdir -p "$out/$name"
  # shellcheck disable=SC2086
  "$python" -m fer_kaggle "$train" "$test" "$out/$name/out.csv" --preset cpu --workdir "$out/$name" \
      --submissions "$out/$name/subs" ${runs[$name]} "$@" 2>&1 | stamp > "$out/$name.log" || { tail "$out/$name.log"; exit 1; }
done
"$python" - "$out" <<'PY'
import re, sys
from pathlib import Path
import numpy as np
out = Path(sys.argv[1])
print("| executor | units | round 0 wall (s) | units per hour | unit seconds (median) |")
print("| --- | ---: | ---: | ---: | ---: |")
for name in ["sequential", "pool_2x1", "ray_default", "ray_2x1"]:
    lines = (out / f"{name}.log").read_text().splitlines()
    start = next(float(l.split()[0]) for l in lines if re.search(r"\sround0: \d+ of \d+ units", l))
    units = [l for l in lines if re.search(r"\sround0/\S+/fold\d: OOF accuracy", l)]
    end = max(float(l.split()[0]) for l in units)
    seconds = [float(re.search(r"\((\d+) s,", l).group(1)) for l in units]
    wall = end - start
    print(f"| {name} | {len(units)} | {wall:.0f} | {len(units) * 3600 / wall:.1f} | {np.median(seconds):.0f} |")
def files(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.glob("round0/*/fold*/*.npz"))}
for a, b in [("sequential", "ray_default"), ("pool_2x1", "ray_2x1")]:
    fa, fb = files(out / a), files(out / b)
    same = fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)
    print(f"{a} and {b}: {len(fa)} probability files, {'identical' if same else 'DIFFERENT'} bytes")
PY
