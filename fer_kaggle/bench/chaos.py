"""`python -m fer_kaggle.bench chaos`: kills and damaged files at random moments of a tiny run, each resumed.

Each trial starts the same command in a fresh run folder and, a few times, stops it at a random moment with
SIGKILL, SIGTERM or SIGINT; after some of the stops it damages a random file of the run folder (cuts it short,
empties it or fills it with garbage). Then it runs the same command to the end. Every trial must end in a
submission byte-identical to an undisturbed run's (on a CPU, where runs are deterministic), and no command
may end in a traceback.

Files never damaged here: folds.csv and folds.json once units exist (the run rightly refuses to guess the
split its units were trained on; test_faults.py tests that refusal) and the lock file (it holds no data).
"""
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from fer_kaggle.data.inputs import demo_head as _head

# one backbone, 2 folds of 300 rows, 2 epochs, with its pseudo-labelling round: every kind of file, in seconds
OPTIONS = ["--preset", "demo", "--backbones", "fer_vgg_tiny", "--folds", "2", "--epochs", "2", "--pseudo",
           "--device", "cpu", "--amp", "off", "--budget", "0"]
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
UNREPAIRABLE = {"folds.csv", "folds.json", "run.lock"}




def _command(files, folder, out):
    return [sys.executable, "-m", "fer_kaggle", str(files[0]), str(files[1]), str(out), "--workdir", str(folder),
            "--submissions", str(folder.parent / f"{folder.name}-subs"), *OPTIONS]


def _run(command, stop_after=None, sig=None):
    """(exit status, stderr) of `command`, stopped by `sig` after `stop_after` seconds if it is still going."""
    # SIGINT back to its default in the child: a shell starts background jobs with it ignored, and Python
    # then installs no KeyboardInterrupt handler, so a Ctrl-C would not reach the run
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _, err = process.communicate(timeout=stop_after)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, sig)  # the whole group, as a terminal's Ctrl-C or a scheduler's kill would
        _, err = process.communicate()
    return process.returncode, err


def _damage(folder, rng):
    """Damage one random file of the run folder; returns what was done, or None when there was nothing."""
    has_units = any(folder.glob("round*/*/fold*/"))
    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".tmp-" not in p.name
                   and not (p.name in UNREPAIRABLE and (has_units or p.name == "run.lock")))
    if not files:
        return None
    path = rng.choice(files)
    how = rng.choice(["cut short", "emptied", "garbage"])
    data = path.read_bytes()
    path.write_bytes({"cut short": data[:len(data) // 2], "emptied": b"",
                      "garbage": rng.randbytes(max(64, len(data)))}[how])
    return f"{path.relative_to(folder)} {how}"


def _count_traceback(figures, err, events):
    if "Traceback" in err:
        figures["tracebacks"] += 1
        events.append(f"TRACEBACK ending {err.strip().splitlines()[-1]!r}")


def chaos(trials=10, stops=3, seed=0, damage_share=0.5, log=print):
    """Run the loop; returns {"trials", "stops", "killed", "damages", "identical", "tracebacks", "failures"}."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="fer_kaggle-chaos-") as tmp:
        root = Path(tmp)
        files = _head("train.csv.xz", 300, root / "train.csv"), _head("test.csv.xz", 40, root / "test.csv")
        started = time.perf_counter()
        code, err = _run(_command(files, root / "undisturbed", root / "undisturbed.csv"))
        if code != 0:
            raise RuntimeError(f"the undisturbed run failed ({code}):\n{err[-3000:]}")
        full_seconds = time.perf_counter() - started
        expected = (root / "undisturbed.csv").read_bytes()
        log(f"undisturbed run: {full_seconds:.1f} s")
        figures = {"trials": 0, "stops": 0, "killed": 0, "damages": 0, "identical": 0, "tracebacks": 0,
                   "failures": []}
        for trial in range(trials):
            folder, out = root / f"trial{trial}", root / f"trial{trial}.csv"
            command, events = _command(files, folder, out), []
            for _ in range(stops):
                name = rng.choice(list(SIGNALS))
                code, err = _run(command, rng.uniform(0.5, full_seconds), SIGNALS[name])
                events.append(f"{name} -> {code}")
                figures["stops"] += 1
                figures["killed"] += code != 0  # 0: the run had already finished when the signal came
                _count_traceback(figures, err, events)
                if rng.random() < damage_share and folder.exists():
                    done = _damage(folder, rng)
                    if done:
                        events.append(f"damaged {done}")
                        figures["damages"] += 1
            code, err = _run(command)
            _count_traceback(figures, err, events)
            same = code == 0 and out.exists() and out.read_bytes() == expected
            figures["trials"] += 1
            figures["identical"] += same
            if not same:
                figures["failures"].append({"trial": trial, "events": events, "exit": code, "stderr": err[-2000:]})
            log(f"trial {trial}: {'; '.join(events)}; then the same command: exit {code}, "
                f"{'byte-identical' if same else 'DIFFERENT'}")
    log(f"chaos: {figures['trials']} trials, {figures['stops']} signals (SIGKILL, SIGTERM, SIGINT at random "
        f"moments; {figures['killed']} stopped a running command), "
        f"{figures['damages']} damaged files; {figures['identical']} of {figures['trials']} final submissions "
        f"byte-identical to the undisturbed run's; {figures['tracebacks']} tracebacks")
    return figures
