"""The plan: the work that fits the time the user gives (`--budget MINUTES`), and keeping to it.

    measure_speeds  seconds per training image and per predicted view of each backbone, timed here on real
                    batches with the run's own pipeline, dtype and threads; cached per machine
    Table           measured OOF accuracy against epochs per unit, per preset recipe (budget_table.json:
                    fold 0 of the full FER2013 train file; `python -m fer_kaggle.bench table` re-measures it)
    make_plan       the plan predicted to give the best ensemble OOF within the time left: which backbones,
                    how many epochs each, how many TTA views, whether a pseudo-labelling round fits
    Keeper          during the run: each unit's epochs when it starts (its share of the time left, at the
                    speed measured so far), and after each epoch the epoch it must end at
    Replay          a plan an earlier run recorded (`--plan run_folder/plan.json`), followed exactly

Training FLOPs make the table machine-independent: the table says what epochs buy, the speed measured
here says what they cost. The plan never looks at test labels; the table holds OOF accuracy only.
"""
import dataclasses
import itertools
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fer_kaggle.training import augment, recipe
from fer_kaggle.core.atomic import read_json, write_json
from fer_kaggle.core.config import SESSION, fields_with
from fer_kaggle.core.errors import DamagedFile, FerKaggleError
from fer_kaggle.models.backbones import unit_config
from fer_kaggle.core.runfolder import short_hash
from fer_kaggle.models import tta
from fer_kaggle.training.train import augment_on, autocast_dtype, make_batches, make_step, synchronize

TABLE_FILE = Path(__file__).with_name("budget_table.json")
PROBE_ROWS = 4096         # train images the speed probe draws its batches from
PROBE_SECONDS = 3.0       # timed training per backbone (after two untimed steps), at least PROBE_STEPS steps
PROBE_STEPS = 7
PSEUDO_SHARE = 0.26       # test images a pseudo-labelling student adds, as a share of the test file (BENCHMARKS.md)
RESERVE_SECONDS = 20.0    # the ensemble, the submission and the last prints, with a margin
SAFETY = 0.02             # share of the budget kept back for what the estimates miss
SPEED_WINDOW = 7          # the last epochs whose speed plans the rest of a unit (BENCHMARKS.md: an epoch's noise)
SLOWDOWN = 1.15           # an epoch this much slower than the ones before it: a competing process, not noise
GROW_SLACK = 0.5          # epochs a growing unit keeps in hand, so an epoch's noise does not refit it back and
                          # forth (15, 14, 15, 14 epochs in the emulated AVX2 hour of 2026-12-07, before it)
PLANNED = ("backbones", "epochs", "pseudo")  # the settings a plan chooses, unless the command line gave them
KEPT = ("tta",)           # a setting the Keeper may lower when the run falls behind (fewer views), unless given
BUDGETS = (15, 30, 60, 120, 240)  # what `bench budget` and the report show
BEFORE_PLAN_SECONDS = 60  # FER2013: reading the files, the shift check and the folds, before the plan is made


# ---------------------------------------------------------------- speed, measured here

def machine_name():
    """The CPU model and the flags that decide its speed (or the GPU's name), with torch's version."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass  # not Linux: the model name alone
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model} [{' '.join(wanted) or 'no AVX2'}], {torch.get_num_threads()} threads, torch {torch.__version__}"


def cache_file():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fer_kaggle" / "speed.json"


@dataclass
class Speed:
    """One backbone's measured cost here, with the run's settings."""
    train: float   # seconds per training image (forward, backward, step, the batched augmentation)
    infer: float   # seconds per image and view predicted


def _speed_key(cfg, backbone, device, dtype, where):
    return (f"{backbone} batch {cfg.batch_size} side {cfg.crop or cfg.image_size} {dtype} augment {where} "
            f"{cfg.augment} on {device.type}")


def measure_speeds(cfg, arms, images, labels, device, use_cache=True):
    """({arm: Speed}, how): timed here (seconds), or read from this machine's cache.

    `arms`: {name: (backbone, settings)}, e.g. a table's (Table.arms), each timed with its own settings (a
    smaller crop is faster)."""
    where, dtype = augment_on(cfg, device), autocast_dtype(cfg.amp, device)
    path, machine = cache_file(), machine_name()
    cached = _read_cache(path).get(machine, {}) if use_cache else {}
    speeds, timed = {}, []
    for name, (backbone, settings) in arms.items():
        arm_cfg = cfg.replace(**settings)
        key = _speed_key(arm_cfg, backbone, device, dtype, where)
        if key in cached:
            speeds[name] = Speed(**cached[key])
            continue
        speeds[name] = _time_backbone(unit_config(arm_cfg, backbone), backbone, images, labels, device)
        cached[key] = asdict(speeds[name])
        timed.append(name)
    if timed and use_cache:
        everything = _read_cache(path)
        everything[machine] = cached
        try:
            write_json(path, everything)
        except OSError:
            pass  # a read-only home: measured again next time, nothing else lost
    how = f"timed now ({', '.join(timed)})" if timed else f"this machine's cache ({path})"
    return speeds, how


def _read_cache(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or damaged: measured again


def _time_backbone(cfg, backbone, images, labels, device):
    """Real training steps of `backbone` (the run's batches, augmentation, dtype, optimizer) and real
    single-view predictions, timed after two untimed steps (kernel selection, allocator)."""
    rows = np.random.default_rng(0).permutation(len(images))[:PROBE_ROWS]
    images, labels = images[rows], labels[rows]
    targets = recipe.targets(labels)
    mean, std = augment.normalize_stats(images, cfg.normalize)
    pipeline = augment.train_pipeline(mean, std, cfg.augment, cfg.image_size, cfg.crop, cfg.erase)
    batches = make_batches(cfg, images, targets, pipeline, device)
    rng_state = torch.get_rng_state()
    step = make_step(cfg, backbone, device, max(1, len(batches)), targets.argmax(1))
    step.model.train()
    train = _seconds_per_training_image(step, batches, device)
    eval_images = augment.to_tensor(images[:1024], augment.eval_pipeline(mean, std, cfg.image_size))
    for _ in range(2):  # the second pass is timed
        synchronize(device)
        begun = time.perf_counter()
        tta.predict_views(step.eval_model(), eval_images, "none", device, amp_dtype=step.amp_dtype, crop=cfg.crop)
        synchronize(device)
    torch.set_rng_state(rng_state)
    return Speed(train=train, infer=(time.perf_counter() - begun) / len(eval_images))


def _seconds_per_training_image(step, batches, device):
    """The median over real training steps (each with the making of its batch) of seconds per image, after
    two untimed steps. A median, so a few steps slowed by the machine's noise do not move it: on a 2-core AVX2
    machine five probes of the mean of 2 s of steps ranged over 10% (batch 128) and 24% (batch 32), these over
    5% and 14%; one such mean in a run timed batch 32 at 1.4 times its usual cost, and the plan trained the
    arm the table puts a point lower (BENCHMARKS.md, the speed probe's noise)."""
    per_image, timed, number, last = [], 0.0, 0, None
    while len(per_image) < PROBE_STEPS or timed < PROBE_SECONDS:
        batches.set_epoch_seed(number)
        for batch_images, batch_targets in batches:
            step(batch_images.to(device), batch_targets.to(device))
            synchronize(device)
            now = time.perf_counter()
            if number >= 2:
                per_image.append((now - last) / len(batch_images))
                timed += now - last
            last, number = now, number + 1
            if len(per_image) >= PROBE_STEPS and timed >= PROBE_SECONDS:
                break
    return float(np.median(per_image))


# ---------------------------------------------------------------- what epochs buy: the measured table

class Table:
    """OOF accuracy of one unit (fold 0) against its epochs, per arm, for one preset.

    An arm is a backbone trained with the preset's recipe (named as the backbone) or with a few settings
    changed (named `backbone:recipe`, its `settings` beside its figures: light augmentation pays at short
    budgets, BENCHMARKS.md). The plan picks at most one arm per backbone.
    Between measured epochs it interpolates linearly in log(epochs); below the fewest it falls to chance
    (1/7 at 0 epochs, linearly); above the most it stays flat, so the plan never counts on a gain nobody
    measured. A blend's gain over its best member counts only with both at the same epochs, as measured.
    Fewer TTA views than the preset's lose what `tta.losses` measured (units predicted again with the first k
    of their views: train.py's valid_acc_views), the mean over those measured, at any epochs and arm.
    """

    def __init__(self, entry):
        self.entry = entry or {}
        self.models = {name: {int(e): acc for e, acc in model["oof"].items()}
                       for name, model in self.entry.get("models", {}).items()}
        self.settings = {name: model.get("settings", {}) for name, model in self.entry.get("models", {}).items()}
        self.blends = {tuple(name.split("+")): {int(e): acc for e, acc in oof.items()}
                       for name, oof in self.entry.get("blends", {}).items()}
        self.pseudo_gain = self.entry.get("pseudo_gain")
        self.tta_losses = self.entry.get("tta", {}).get("losses", [])

    @classmethod
    def for_preset(cls, preset, path=TABLE_FILE):
        return cls(json.loads(Path(path).read_text()).get(preset))

    def knows(self, backbone):
        return backbone in self.models

    def arms(self, backbones, explicit=()):
        """{arm: (backbone, settings)} a plan weighs: the preset's recipe of each of `backbones`, and the table's
        other recipes of it unless they change a setting the command line gave (which is obeyed). Without
        --backbones, also the measured arms of the other backbones the table holds for this preset: a
        narrower net trains more epochs in the same time (fer_vgg_tiny's 2.4 times fer_vgg_cpu's in float32,
        which wins an AVX2 hour: BENCHMARKS.md), and a preset's list is what `--budget 0` trains."""
        others = () if "backbones" in explicit else tuple(dict.fromkeys(
            backbone_of_arm(name) for name in self.models if backbone_of_arm(name) not in backbones))
        candidates = (*backbones, *others)
        arms = {b: (b, {}) for b in candidates if b in backbones or b in self.models}
        for name, settings in self.settings.items():
            backbone = backbone_of_arm(name)
            if name != backbone and backbone in candidates and not set(settings) & set(explicit):
                arms[name] = (backbone, settings)
        return arms

    def blended(self, first, second):
        """Whether a blend of any arms of these two backbones was measured (else it is predicted to gain nothing)."""
        return any({backbone_of_arm(arm) for arm in pair} == {first, second} for pair in self.blends)

    def most_epochs(self, backbone):
        return max(self.models[backbone])

    def oof(self, backbone, epochs):
        return _interpolate(self.models[backbone], epochs)

    def blend_gain(self, pair, epochs):
        """Measured blend accuracy over its best member's with both at `epochs` (interpolated; 0 below 0)."""
        measured = self.blends.get(tuple(pair)) or self.blends.get(tuple(reversed(pair)))
        if not measured:
            return 0.0
        gains = {e: acc - max(self.models[b][e] for b in pair) for e, acc in measured.items()
                 if all(e in self.models[b] for b in pair)}
        return max(0.0, _interpolate(gains, epochs, floor=None)) if gains else 0.0

    def views_loss(self, views):
        """OOF accuracy a unit loses predicting with its first `views` TTA views instead of all the preset's
        (the mean of the measured losses; None where none was measured: then fewer views are not weighed)."""
        measured = [m["views"][str(views)] for m in self.tta_losses if str(views) in m["views"]]
        return float(np.mean(measured)) if measured else None

    def ensemble_oof(self, epochs):
        """Predicted ensemble OOF of models {backbone: epochs} (all known to the table)."""
        singles = {b: self.oof(b, e) for b, e in epochs.items()}
        best = max(singles.values())
        # a blend's gain is measured with both members at the same epochs: counted only there (a member
        # trained far less than the other adds little that was measured)
        gain = max((self.blend_gain(pair, epochs[pair[0]]) for pair in itertools.combinations(epochs, 2)
                    if epochs[pair[0]] == epochs[pair[1]]), default=0.0)
        return best + gain


def table_command(train, preset, backbones, epochs, recipe="", settings=None):
    """The `bench table` command line that measures these rows (a recipe arm with the settings it changes)."""
    command = (f"python -m fer_kaggle.bench table {train} --preset {preset} --backbones {','.join(backbones)} "
               f"--epochs {','.join(map(str, epochs))}")
    return command + (f" --recipe {recipe}" + "".join(f" --set {k}={v}" for k, v in (settings or {}).items())
                      if recipe else "")


def backbone_of_arm(name):
    """`fer_vgg_cpu:light` -> `fer_vgg_cpu` (an arm of the preset's own recipe is named as its backbone)."""
    return name.split(":", 1)[0]


def _interpolate(points, x, floor=1 / 7):
    """Piecewise linear in log(x) through `points` {x: y}; flat above; towards `floor` at 0 below."""
    xs = sorted(points)
    if x >= xs[-1]:
        return points[xs[-1]]
    if x <= xs[0]:
        return points[xs[0]] if floor is None else floor + (points[xs[0]] - floor) * x / xs[0]
    high = next(i for i, v in enumerate(xs) if v >= x)
    a, b = xs[high - 1], xs[high]
    t = (math.log(x) - math.log(a)) / (math.log(b) - math.log(a))
    return points[a] + t * (points[b] - points[a])


# ---------------------------------------------------------------- the plan

@dataclass
class Work:
    """What the run has to do, in numbers: rows per unit and what each backbone costs per epoch here."""
    folds: int
    train_rows: int      # training rows of one unit (the rows outside its fold)
    predict_rows: int    # held-out and test rows one unit predicts
    monitor_rows: int    # held-out rows checked after each epoch
    views: int           # TTA views per predicted row
    test_rows: int
    speeds: dict         # {backbone: Speed}
    fewest_views: int = 2  # the fewest TTA views the Keeper may cut a unit's prediction to (tta.fewest_views)
    side_by_side: int = 1  # units running at once at the measured speed (one per GPU on a several-GPU machine)

    def epoch_seconds(self, backbone, student=False):
        rows = self.train_rows + (round(PSEUDO_SHARE * self.test_rows) if student else 0)
        speed = self.speeds[backbone]
        return rows * speed.train + self.monitor_rows * speed.infer

    def predict_seconds(self, backbone):
        return self.predict_rows * self.views * self.speeds[backbone].infer

    def unit_seconds(self, backbone, epochs, student=False):
        return epochs * self.epoch_seconds(backbone, student) + self.predict_seconds(backbone)

    def for_folds(self, folds):
        """This Work split into `folds` folds instead: more folds, more units, each on more rows (an even split).
        None (a plan.json from before plans chose the folds): as it is."""
        if folds in (None, self.folds):
            return self
        rows = self.train_rows + self.predict_rows - self.test_rows
        held_now, held = self.predict_rows - self.test_rows, -(-rows // folds)
        monitor = held if self.monitor_rows >= held_now else min(self.monitor_rows, held)  # all, or a sample
        return dataclasses.replace(self, folds=folds, train_rows=rows - held, predict_rows=held + self.test_rows,
                                   monitor_rows=monitor)

    def for_plan(self, plan):
        """This Work with the plan's folds, TTA views and each planned backbone's speed as its arm's: what the
        Keeper and the plan's print use."""
        return dataclasses.replace(self.for_folds(plan.folds), views=plan.views or self.views,
                                   speeds={b: self.speeds[plan.arm(b)] for b in plan.backbones})

    def run_seconds(self, epochs, pseudo):
        """Training and prediction of every unit of models {backbone: epochs}, with or without students:
        round by round (students wait for every teacher), each unit, longest first, on the device free first."""
        rounds = [[self.unit_seconds(b, e)] * self.folds for b, e in epochs.items()]
        rounds = [sum(rounds, [])] + ([[self.unit_seconds(b, e, True) for b, e in epochs.items()
                                        for _ in range(self.folds)]] if pseudo else [])
        return sum(_makespan(units, self.side_by_side) for units in rounds)


def _makespan(seconds, devices):
    """When the last of units taking `seconds` ends, each started on the device that is free first."""
    if devices <= 1:
        return sum(seconds)
    ends = [0.0] * devices
    for unit in sorted(seconds, reverse=True):
        ends[ends.index(min(ends))] += unit
    return max(ends)


@dataclass
class Plan:
    budget: float                 # minutes
    backbones: tuple
    epochs: dict                  # {backbone: epochs per unit}
    pseudo: bool
    most: dict                    # {backbone: the most epochs a unit may grow to when the machine is faster}
    seconds: dict                 # predicted seconds: {"spent", "units", "reserve"}
    oof: float = None             # predicted ensemble OOF (None: the table does not know these backbones)
    singles: dict = field(default_factory=dict)   # {backbone: predicted OOF alone}
    explicit: tuple = ()          # what the command line fixed: obeyed, never re-planned
    notes: list = field(default_factory=list)
    arms: dict = field(default_factory=dict)      # {backbone: its table arm} where not the preset's own recipe
    settings: dict = field(default_factory=dict)  # {backbone: the settings that arm changes}
    folds: int = None             # the run's folds (None in a plan.json from before plans chose them: cfg's)
    views: int = None             # TTA views a unit predicts with, where fewer than the preset's TTA has (None: all)

    @property
    def id(self):
        """Names the plan in its units' keys: the same command resumed keeps it, another plan trains anew."""
        chosen = {"budget": self.budget, "backbones": list(self.backbones), "epochs": self.epochs,
                  "pseudo": self.pseudo}
        if self.settings:  # a plan of the preset's own recipe keeps the id it had before arms existed
            chosen["settings"] = self.settings
        if self.views:  # so does a plan with all the TTA's views
            chosen["views"] = self.views
        return short_hash(chosen)

    def arm(self, backbone):
        """The table's name of what `backbone` trains: `backbone`, or `backbone:recipe`."""
        return self.arms.get(backbone, backbone)

    def unit_cfg(self, cfg, backbone):
        return cfg.replace(epochs=self.epochs[backbone], **self.settings.get(backbone, {}))

    def run_cfg(self, cfg):
        """`cfg` with what the plan chose for the whole run: its backbones, pseudo-labelling and folds."""
        return cfg.replace(backbones=self.backbones, pseudo=self.pseudo, folds=self.folds or cfg.folds)

    def to_json(self):
        return {**asdict(self), "backbones": list(self.backbones), "explicit": list(self.explicit), "id": self.id}

    @classmethod
    def from_json(cls, saved):
        fields = {k: v for k, v in saved.items() if k in cls.__dataclass_fields__}
        return cls(**{**fields, "backbones": tuple(fields["backbones"]), "explicit": tuple(fields["explicit"])})


EPOCH_CHOICES = sorted({*range(1, 13), *range(14, 41, 2), 45, 50, 60, 80, 100})


def make_plan(cfg, explicit, work, table, seconds_left, budget):
    """The plan predicted to give the best ensemble OOF in `seconds_left` (or an error saying what cannot fit).

    `explicit`: the fields the user gave (backbones, epochs, pseudo, any recipe setting): kept as given. The
    rest is chosen: which of the preset's backbones, each with which of its table's arms (recipes) where
    `work` has the arm's speed, how many epochs each (up to the table's most), how many TTA views (fewer buy
    epochs: on a slow machine ten-crop is a quarter of the hour), and the pseudo-labelling round when the table
    says what it gains. Ties in predicted accuracy go to the cheaper plan.
    """
    usable = seconds_left - RESERVE_SECONDS - SAFETY * 60 * budget
    known = all(table.knows(b) for b in cfg.backbones)
    arms = ({name: arm for name, arm in table.arms(cfg.backbones, explicit).items() if name in work.speeds}
            if known else {b: (b, {}) for b in cfg.backbones})
    subsets = [tuple(cfg.backbones)] if "backbones" in explicit or not known else _subsets(arms, table)
    pseudo_options = [cfg.pseudo] if "pseudo" in explicit or table.pseudo_gain is None else [False, True]
    view_options = _view_options(explicit, work, table) if known else [(work.views, 0.0)]
    best = None
    for subset in subsets:
        for chosen in _arm_choices(subset, arms):
            folds = {arms[a][1].get("folds", work.folds) for a in chosen}
            if len(folds) > 1:
                continue  # the models of one ensemble share one split (the blend and pseudo-labels are per fold)
            split = work.for_folds(folds.pop())
            for pseudo, (views, views_loss) in itertools.product(pseudo_options, view_options):
                viewed = dataclasses.replace(split, views=views)
                for epochs in _epoch_choices(cfg, chosen, explicit, table, known):
                    cost = viewed.run_seconds(epochs, pseudo)
                    if cost > usable:
                        continue
                    gain = table.pseudo_gain if pseudo and table.pseudo_gain else 0.0
                    oof = table.ensemble_oof(epochs) + gain - views_loss if known else None
                    score = (round(oof, 4) if oof is not None else sum(epochs.values()), -cost)
                    if best is None or score > best[0]:
                        best = (score, chosen, epochs, pseudo, oof, cost, split.folds, views)
    if best is None:
        return _cannot_fit(cfg, explicit, work, table, budget, seconds_left)
    _, chosen, by_arm, pseudo, oof, cost, folds, views = best
    backbone = {name: arms[name][0] for name in chosen}
    epochs = {backbone[a]: e for a, e in by_arm.items()}
    most = {backbone[a]: (by_arm[a] if "epochs" in explicit else
                          table.most_epochs(a) if known else max(by_arm[a], cfg.epochs)) for a in chosen}
    singles = {backbone[a]: table.oof(a, e) for a, e in by_arm.items()} if known else {}
    notes = [] if known else [f"no measured table for {', '.join(b for b in cfg.backbones if not table.knows(b))} "
                              f"with preset {cfg.preset}: the epochs fill the time (at most {cfg.epochs} each), "
                              f"and no accuracy is predicted"]
    if known and "epochs" not in explicit:
        notes += _unspent_note(cfg.preset, by_arm, table, usable - cost, budget)
    if views < work.views:
        notes.append(f"TTA with the first {views} of {cfg.tta}'s {work.views} views ({_VIEW_NAMES.get(views, 'the plain image first')}"
                     f"): the table says they lose {100 * table.views_loss(views):.2f} points of OOF, and the time "
                     f"they save buys more in epochs (--tta {cfg.tta} keeps all)")
    return Plan(budget, tuple(backbone[a] for a in chosen), epochs, pseudo, most,
                {"spent": 60 * budget - seconds_left, "units": cost, "reserve": RESERVE_SECONDS},
                oof, singles, tuple(sorted(explicit & {*PLANNED, *KEPT})), notes,
                arms={backbone[a]: a for a in chosen if a != backbone[a]},
                settings={backbone[a]: arms[a][1] for a in chosen if arms[a][1]},
                folds=folds, views=views if views < work.views else None)


_VIEW_NAMES = {1: "the plain image", 2: "the plain image and its flip"}
UNSPENT_SHARE = 0.05  # time left over worth a note: more than the 5% a run may overrun by


def _unspent_note(preset, by_arm, table, unspent_seconds, budget):
    """[a note] where the plan leaves more than UNSPENT_SHARE of the budget idle because every arm stands at its
    table's most epochs: the plan counts on no gain nobody measured, so the rest of the time would buy nothing it
    can predict; the user learns why the run ends early and which measurement would let it use the time."""
    capped = [a for a, e in by_arm.items() if e >= table.most_epochs(a)]
    if unspent_seconds <= UNSPENT_SHARE * 60 * budget or len(capped) < len(by_arm):
        return []
    most = ", ".join(f"{a} up to {table.most_epochs(a)} epochs" for a in capped)
    measure = "; ".join("`" + table_command("TRAIN", preset, [backbone_of_arm(a)], [2 * table.most_epochs(a)],
                                            a.partition(":")[2], table.settings[a]) + "`" for a in capped)
    return [f"about {unspent_seconds / 60:.0f} of the {budget:g} minutes left unspent: the table measured {most} and "
            f"counts on no gain past them, and nothing else it holds fits better ({measure} measures more)"]


def _view_options(explicit, work, table):
    """[(TTA views, the OOF they lose)]: all the TTA's views, and the Keeper's fewest (the plain image and its
    flip) where the table measured what they lose; all only when the command line gave --tta. Not the counts
    between: ten-crop's 4-8 views are within a tenth of a point of each other, where one fold's noise would
    choose (BENCHMARKS.md)."""
    loss = table.views_loss(work.fewest_views)
    if "tta" in explicit or work.fewest_views >= work.views or loss is None:
        return [(work.views, 0.0)]
    return [(work.views, 0.0), (work.fewest_views, loss)]


def _subsets(arms, table):
    """The sets of backbones worth weighing: each alone, and those where every member is in a measured blend
    with another (a member with none only adds time: the table predicts no gain from it)."""
    candidates = tuple(dict.fromkeys(backbone for backbone, _ in arms.values()))
    return [subset for size in range(len(candidates), 0, -1) for subset in itertools.combinations(candidates, size)
            if size == 1 or all(any(table.blended(b, other) for other in subset if other != b) for b in subset)]


def _arm_choices(subset, arms):
    """Each way to give every backbone of `subset` one of its arms: tuples of arm names."""
    options = [[name for name, (backbone, _) in arms.items() if backbone == b] for b in subset]
    return itertools.product(*options)


def _epoch_choices(cfg, chosen, explicit, table, known):
    """Every {arm: epochs} to weigh: the given epochs, or each arm's choices up to its ceiling."""
    if "epochs" in explicit:
        yield {a: cfg.epochs for a in chosen}
        return
    if not known:  # no table: the same epochs for all, as many as fit (the most that fits wins by score)
        for e in range(1, cfg.epochs + 1):
            yield {a: e for a in chosen}
        return
    ranges = [[e for e in EPOCH_CHOICES if e <= table.most_epochs(a)] for a in chosen]
    for combo in itertools.product(*ranges):
        yield dict(zip(chosen, combo))


def _cannot_fit(cfg, explicit, work, table, budget, seconds_left):
    one_backbone = "backbones" not in explicit and all(table.knows(b) for b in cfg.backbones)
    smallest = {b: (cfg.epochs if "epochs" in explicit else 1)
                for b in (cfg.backbones[:1] if one_backbone else cfg.backbones)}
    fixed_pseudo = "pseudo" in explicit or table.pseudo_gain is None
    need = work.run_seconds(smallest, cfg.pseudo and fixed_pseudo)
    minutes = (60 * budget - seconds_left + need + RESERVE_SECONDS) / 60 / (1 - SAFETY)
    given = ", ".join(f"--{name}" for name in sorted(explicit & set(PLANNED)))
    what = f"with {given} as given, " if given else ""
    raise FerKaggleError(f"--budget {budget:g}: {what}the least this run can do ({_describe_models(smallest)}, "
                         f"{cfg.folds} folds) takes about {math.ceil(minutes)} minutes on this machine; give "
                         f"--budget {math.ceil(minutes)} or more" + (", fewer of those options" if given else "")
                         + ", or --budget 0 to run without a plan")


def _describe_models(epochs):
    return ", ".join(f"{b} {e} epoch{'s' * (e != 1)}" for b, e in epochs.items())


def describe(plan, work, how, finish_at):
    """The plan as one block: each part with its predicted minutes, the finish time, the predicted OOF."""
    lines = [f"plan for --budget {plan.budget:g} minutes on {machine_name()} (speeds: {how}):"]
    for b in plan.backbones:
        e = plan.epochs[b]
        minutes = work.folds * work.unit_seconds(b, e) / 60
        alone = f"; OOF {plan.singles[b]:.3f} alone" if b in plan.singles else ""
        lines.append(f"  {b:<18} {work.folds} folds x {e:>3} epochs   {minutes:6.1f} min "
                     f"({work.epoch_seconds(b):.1f} s an epoch, {work.predict_seconds(b):.0f} s of TTA a unit){alone}")
        if b in plan.settings:
            lines.append(f"  {'':<18} recipe {plan.arm(b).split(':', 1)[1]}: "
                         + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in plan.settings[b].items())
                         + " (the table's best at these epochs)")
    if plan.pseudo:
        minutes = work.folds * sum(work.unit_seconds(b, plan.epochs[b], True) for b in plan.backbones) / 60
        lines.append(f"  {'pseudo-labelling':<18} a student per unit       {minutes:6.1f} min")
    else:
        lines.append(f"  {'pseudo-labelling':<18} no")
    if work.side_by_side > 1:
        lines.append(f"  {work.side_by_side} units at a time, one per GPU: the parts above take "
                     f"{plan.seconds['units'] / 60:.1f} min of the clock")
    lines.append(f"  reading, shift check and folds: {plan.seconds['spent'] / 60:.1f} min so far; the ensemble and "
                 f"the submission {plan.seconds['reserve'] / 60:.1f} min")
    total = plan.seconds["spent"] + plan.seconds["units"] + plan.seconds["reserve"]
    oof = f"; predicted ensemble OOF {plan.oof:.3f}" if plan.oof is not None else ""
    lines.append(f"  predicted: {total / 60:.1f} minutes in all, done at {time.strftime('%H:%M', time.localtime(finish_at))}"
                 f"{oof} (budget_table.json; `bash run.sh ... --budget 0` runs the preset as it is)")
    lines += [f"  note: {note}" for note in plan.notes]
    return "\n".join(lines)


def curve(cfg, work, table, budgets=BUDGETS, before_plan=BEFORE_PLAN_SECONDS):
    """[(minutes, the plan, or the reason nothing fits)] for each budget: what each buys on this machine."""
    points = []
    for minutes in budgets:
        try:
            points.append((minutes, make_plan(cfg, set(), work, table, 60 * minutes - before_plan, minutes)))
        except FerKaggleError as exc:
            points.append((minutes, str(exc)))
    return points


def work_for(cfg, train_rows, test_rows, speeds, held_out=None, side_by_side=1):
    """The Work of a run of `cfg` on files of these sizes (each unit holds one fold out: `held_out` rows,
    by default the largest fold of an even split)."""
    held_out = -(-train_rows // cfg.folds) if held_out is None else held_out
    return Work(cfg.folds, train_rows - held_out, held_out + test_rows, min(cfg.monitor_rows or held_out, held_out),
                len(tta.views(cfg.tta, cfg.crop)), test_rows, speeds, tta.fewest_views(cfg.tta), side_by_side)


# ---------------------------------------------------------------- keeping to it

def recent_epoch_seconds(history, expected):
    """What the epochs still to come will take, judged from those done (`history`, seconds each) and what an
    epoch was `expected` to take as the unit started, which stands in for the epochs not yet run: the last
    epoch alone when it was much slower than the ones before it (a competing process: counted at once, or
    the unit overruns), else the mean of the last SPEED_WINDOW without the fastest and the slowest. So an
    epoch's noise (a few percent on a shared machine) barely moves the estimate, and one slow epoch, once
    past, does not hold it up (with a plain mean, a two-minute competitor cost an AVX2 hour 3% of its time
    in `bench keeper`)."""
    window = ([expected] * SPEED_WINDOW + list(history))[-SPEED_WINDOW:]
    if window[-1] > SLOWDOWN * float(np.median(window[:-1])):
        return window[-1]
    return float(np.mean(sorted(window)[1:-1]))


class Keeper:
    """Keeps a running plan to its end time: the `pace` of train.train_unit (units one at a time, here).

    When a unit starts it gets its share of the time left (its planned cost over that of every unit not yet
    finished, at the speed measured so far), as epochs: fewer when the machine turned out slower (a busy
    laptop), more up to the table's most when faster. The share never eats into the least the other units
    need (an epoch and their fewest TTA views each). After each epoch the unit's epochs are fitted again to
    what is left of its share at the speed of its last epochs: fewer while the machine is slower, and more
    again (up to the table's most) when a slowdown passes (a competing process that ended) or a unit that
    started at a slow moment runs faster, its LR schedule refitted to reach 0 at the new end each time; if
    its prediction still does not fit, it predicts with fewer TTA views, or (given the `table`) takes the time
    of the views that lose more than the units after it lose in epochs from theirs. Settings the command line
    gave are never changed.
    `record` collects what it decided (plan.json), so the run can be replayed. `clock`: seconds, as
    time.monotonic (`bench keeper` runs the keeper on a simulated machine's clock).
    """

    def __init__(self, plan, work, units, end, record, clock=time.monotonic, table=None):
        self.plan, self.work, self.end, self.record, self.clock = plan, work, end, record, clock
        self.table = table  # what views and epochs buy: a unit behind weighs its views against later epochs
        self.pending = {unit.name: unit for unit in units}   # not finished
        self.slowness = {}     # backbone -> measured epoch seconds / predicted
        self.share_end = None  # when the running unit's share of the time ends, fixed as it starts
        self.start_epoch_seconds = None  # the running unit's epoch seconds as it started (the speed before it)
        # backbone -> a finished unit's prediction seconds / the estimate at its training speed: the probe times
        # one view of 1,024 images, and ten-crop TTA of 16,748 took 1.5 times that (cpu-2c-avx2, BENCHMARKS.md)
        self.predict_extra = {}
        self.predicting = None  # (unit name, clock, views) as the running unit starts predicting

    def _slowness(self, unit):
        return self.slowness.get(unit.backbone, self.slowness.get("last", 1.0))

    def _epoch_seconds(self, unit):
        return self.work.epoch_seconds(unit.backbone, student=unit.round == 1) * self._slowness(unit)

    def _predict_seconds(self, unit, views=None):
        every = (self.work.predict_seconds(unit.backbone) * self._slowness(unit)
                 * self.predict_extra.get(unit.backbone, 1.0))
        return every if views is None else every * views / self.work.views

    def _cost(self, unit, epochs):
        return epochs * self._epoch_seconds(unit) + self._predict_seconds(unit)

    def _fewest_views(self):
        """The fewest TTA views a unit may predict with: the plain image and its flip, or all when given."""
        return self.work.views if "tta" in self.plan.explicit else min(self.work.views, self.work.fewest_views)

    def _least(self, unit):
        """What a unit cannot do without: one epoch, and its prediction with the fewest views."""
        return self._epoch_seconds(unit) + self._predict_seconds(unit, self._fewest_views())

    def _latest_end(self, unit):
        """The latest `unit` may end so that every other unfinished unit still gets its least, at the speed
        measured so far (a slowdown raises their least, and so moves this end forward)."""
        others = sum(self._least(u) for name, u in self.pending.items() if name != unit.name)
        return self.end - RESERVE_SECONDS - others

    def _unit_end(self, unit):
        """When the running unit must be done: its share fixed at its start, or earlier when the units not
        started need more at the speed measured now. Computed afresh each time, so the time a passing
        slowdown took comes back."""
        return min(self.share_end, self._latest_end(unit))

    def start(self, unit, planned, done):
        """The epochs a unit gets as it starts (`done`: epochs a resumed one has already trained)."""
        if "epochs" in self.plan.explicit:
            return planned
        self.start_epoch_seconds = self._epoch_seconds(unit)
        left = self.end - self.clock() - RESERVE_SECONDS
        others = [u for name, u in self.pending.items() if name != unit.name]
        mine = self._cost(unit, planned - done)
        share = left * mine / max(1e-9, mine + sum(self._cost(u, self.plan.epochs[u.backbone]) for u in others))
        share = min(share, self._latest_end(unit) - self.clock())
        self.share_end = self.clock() + share
        if done:
            return planned  # its schedule is under way: after_epoch moves its end if it must
        fits = math.floor((share - self._predict_seconds(unit)) / self._epoch_seconds(unit))
        epochs = max(1, min(self.plan.most[unit.backbone], fits))
        self.record[unit.name] = {"start": epochs, "refits": []}
        return epochs

    def after_epoch(self, unit, epoch, planned, epoch_seconds):
        """The epoch a unit must now end at, after its epoch `epoch`: fewer than `planned` while the machine
        is slower than its share assumed, more (up to the table's most) while it is faster."""
        recent = recent_epoch_seconds(epoch_seconds, self.start_epoch_seconds or self._epoch_seconds(unit))
        ratio = recent / self.work.epoch_seconds(unit.backbone, student=unit.round == 1)
        self.slowness[unit.backbone] = self.slowness["last"] = ratio
        entry = self.record.setdefault(unit.name, {"start": planned, "refits": []})
        if "epochs" in self.plan.explicit or self.share_end is None or epoch >= planned:
            return planned
        # a slowdown makes the units not started need more too: their least comes out of this unit's share
        # (else the last unit overruns: BENCHMARKS.md, float32 at 15 minutes)
        left = self._unit_end(unit) - self.clock() - self._predict_seconds(unit)
        fits = left / recent  # epochs that fit after this one
        if epoch + fits < planned:  # behind: end earlier at once, by what fits with the fewest TTA views
            wanted = min(planned, epoch + max(1, math.floor(self._fits_before_least_prediction(unit) / recent)))
        elif epoch + fits >= planned + 1 + GROW_SLACK:  # ahead by more than an epoch and the slack: grow
            wanted = min(self.plan.most[unit.backbone], epoch + math.floor(fits - GROW_SLACK))
        else:  # within the slack: as it is (an epoch's noise would refit it back and forth)
            wanted = planned
        if wanted != planned:
            entry["refits"].append([epoch, wanted])
        return wanted

    def _fits_before_least_prediction(self, unit):
        """Seconds the running unit may still train if it predicts with its fewest TTA views: a unit behind
        gives up views before epochs (views() takes what fits once it has trained). A slowdown that passes
        (a competing process that ends) then costs no epochs, and one that stays costs the views (ten-crop
        over the flip alone: 0.4 points, BENCHMARKS.md), not the two or three epochs their time would buy."""
        return self._unit_end(unit) - self.clock() - self._predict_seconds(unit, self._fewest_views())

    def views(self, unit, every):
        """The TTA views a trained unit predicts with: the plan's (all `every` of its TTA, or fewer where they
        buy more epochs), or as many of them as fit in what is left of its share, or, where the table says
        views lose more than the units not yet started lose giving up the epochs they would take, as many as
        fit before what those units cannot do without."""
        count = min(every, self.work.views)
        if "tta" not in self.plan.explicit and self.share_end is not None and count > 1:
            per_view = max(1e-9, self._predict_seconds(unit) / self.work.views)
            fits = math.floor((self._unit_end(unit) - self.clock()) / per_view)
            if fits < count:
                most = math.floor((self._latest_end(unit) - self.clock()) / per_view)
                fits = max(fits, self._views_worth_borrowing(unit, count, fits, most, per_view))
            count = max(min(count, self.work.fewest_views), min(count, fits))
        if count < every:  # recorded, so a replay predicts with the same views
            self.record.setdefault(unit.name, {"start": None, "refits": []})["views"] = count
        self.predicting = (unit.name, self.clock(), count)
        return count

    def _views_worth_borrowing(self, unit, wanted, fits, most, per_view):
        """The views (from `fits`, what the unit's share holds, up to `most`) that lose the least OOF, each view
        beyond its share paid for by the epochs the units not yet started give up for its seconds.

        A unit covers one fold's rows and so does each of the others: four views of ten cost
        fer_vgg_tiny:light32 about half a point on its fold, where their 42 s, spread over the next units,
        cost about one epoch among them, 0.15 points on one fold's worth of rows (BENCHMARKS.md)."""
        others = [u for name, u in self.pending.items() if name != unit.name]
        most = min(most, wanted)
        if self.table is None or not others or most <= fits:
            return fits
        epoch_seconds = sum(self._epoch_seconds(u) for u in others) / len(others)
        epoch_loss = sum(self._epoch_loss(u) for u in others) / len(others)

        def loss(views):  # this unit's views lost, and the epochs their extra seconds take from the others
            lost = 0.0 if views >= self.work.views else self.table.views_loss(max(views, self.work.fewest_views))
            if lost is None:
                return None
            return lost + max(0, views - fits) * per_view / epoch_seconds * epoch_loss

        costs = {views: loss(views) for views in range(max(fits, 1), most + 1)}
        if not costs or any(cost is None for cost in costs.values()):
            return fits  # a view count the table never measured: the share as it is
        return min(costs, key=lambda views: (costs[views], views))

    def _epoch_loss(self, unit):
        """OOF accuracy a unit not yet started loses for its last planned epoch (the table's slope there)."""
        arm, epochs = self.plan.arm(unit.backbone), self.plan.epochs[unit.backbone]
        if not self.table.knows(arm) or epochs <= 1:
            return float("inf")  # unknown, or its one epoch: never taken
        return max(0.0, self.table.oof(arm, epochs) - self.table.oof(arm, epochs - 1))

    def finished(self, unit):
        """A unit is done: what its prediction really took, against the estimate, prices the next units'."""
        self.pending.pop(unit.name, None)
        name, started, views = self.predicting or (None, 0.0, 0)
        if name == unit.name and views:  # the estimate it had, corrected by what it missed
            took, estimate = self.clock() - started, self._predict_seconds(unit, views)
            self.predict_extra[unit.backbone] = self.predict_extra.get(unit.backbone, 1.0) * took / max(1e-9, estimate)
        self.predicting = None


class Replay:
    """A recorded plan followed exactly: each unit's epochs and refits as the recording run decided them, and its
    TTA views (the plan's `views` where the record has none: a run of several units at a time keeps no record)."""

    def __init__(self, record, views=None):
        self.record, self.plan_views = record, views

    def start(self, unit, planned, done):
        entry = self.record.get(unit.name)
        return planned if done or entry is None else entry["start"]

    def after_epoch(self, unit, epoch, planned, epoch_seconds):
        entry = self.record.get(unit.name) or {"refits": []}
        return next((wanted for at, wanted in entry["refits"] if at == epoch), planned)

    def views(self, unit, every):
        return (self.record.get(unit.name) or {}).get("views", min(every, self.plan_views or every))

    def finished(self, unit):
        pass


# ---------------------------------------------------------------- one run's plan: made, resumed or replayed

class Session:
    """A budgeted run's plan in its run folder (plan.json): made once, kept by the same command resumed
    (with the minutes already spent), and recording each unit's epochs so it can be replayed exactly."""

    def __init__(self, path, request, plan, pace, record, spent_before):
        self.path, self.request, self.plan, self.pace, self.record = path, request, plan, pace, record
        self.spent_before, self.started = spent_before, time.monotonic()

    def spent(self):
        return self.spent_before + time.monotonic() - self.started

    def unit_done(self, unit):
        self.pace.finished(unit)
        self.save()

    def save(self, finished=False):
        if self.path is None:
            return  # a replay of this very folder's plan.json: it stays as its run wrote it
        write_json(self.path, {"request": self.request, "plan": self.plan.to_json(), "units": self.record,
                               "spent_seconds": round(self.spent(), 1), "finished": finished})


def request_of(cfg, fingerprints):
    """What makes a run the same command again: its settings (not how long this session may take) and data."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in SESSION_FIELDS}
    return short_hash({"settings": settings, "data": list(fingerprints)})


SESSION_FIELDS = fields_with(SESSION)  # how this session runs, not what the run plans or learns


def plan_run(cfg, explicit, plan_path, faces, device, units_of, sequential, elapsed, fingerprints, side_by_side=1,
             split_folds=None):
    """(cfg with the plan's backbones, pseudo-labelling and folds, Session) for a budgeted run; (cfg, None) without.

    Made before the run's split, which has the plan's folds: `faces` (train images, train labels, test rows)
    are what the speed probe trains on and what sizes the units. `split_folds`: the folds of the split the run
    folder already holds, which a new plan keeps (its units were trained on it).

    `units_of(cfg, plan)`: the run's units still to train under a plan (rounds 0 and 1): the Keeper shares
    the time left among them. `sequential`: units one at a time here, so the Keeper can keep the plan;
    `side_by_side`: units the executor runs at once at the measured speed (one per GPU), as planned.
    `elapsed`: seconds this session has spent before planning (reading, the shift check, the folds).
    """
    if cfg.plan:
        return _replay(cfg, Path(cfg.plan), plan_path)
    if not cfg.budget:
        return cfg, None
    called = time.monotonic()

    def spent_here():  # this session's seconds so far, the speed probe's included
        return elapsed + time.monotonic() - called

    request = request_of(cfg, fingerprints)
    table = Table.for_preset(cfg.preset)
    stored = _read_plan(plan_path)
    if stored and stored.get("request") == request:
        plan, record, spent_before = Plan.from_json(stored["plan"]), stored["units"], stored["spent_seconds"]
        print(f"budget: the same command again: continuing its plan ({_describe_models(plan.epochs)}"
              f"{', pseudo-labels' if plan.pseudo else ''}); {spent_before / 60:.1f} of {cfg.budget:g} minutes "
              f"spent in earlier sessions")
        work, _ = _work(cfg, {plan.arm(b): (b, plan.settings.get(b, {})) for b in plan.backbones}, faces, device,
                        side_by_side)
        work = work.for_plan(plan)
    else:
        explicit = set(explicit)
        if split_folds and "folds" not in explicit:
            cfg, explicit = cfg.replace(folds=split_folds), explicit | {"folds"}
        work, how = _work(cfg, table.arms(cfg.backbones, explicit), faces, device, side_by_side)
        plan = make_plan(cfg, explicit, work, table, 60 * cfg.budget - spent_here(), cfg.budget)
        if split_folds and any(s.get("folds", split_folds) != split_folds for s in table.settings.values()):
            plan.notes.append(f"the run folder holds a {split_folds}-fold split: kept, so recipes of other folds "
                              f"were not weighed (another --workdir lets the plan choose its folds)")
        work = work.for_plan(plan)
        record, spent_before = {}, 0.0
        print(describe(plan, work, how, time.time() + sum(plan.seconds.values()) - plan.seconds["spent"]), flush=True)
    cfg = plan.run_cfg(cfg)
    end = time.monotonic() + 60 * cfg.budget - spent_before - spent_here()
    pace = Keeper(plan, work, units_of(cfg, plan), end, record, table=table) if sequential else None
    if pace is None:
        print("budget: planned, but kept only by the one-at-a-time executor: with several GPUs, --parallel-units "
              "or --executor ray each unit trains its planned epochs")
        pace = Replay(record, plan.views)
    session = Session(plan_path, request, plan, pace, record, spent_before + spent_here())
    session.save()
    return cfg, session


def _work(cfg, arms, faces, device, side_by_side):
    train_images, train_labels, test_rows = faces
    speeds, how = measure_speeds(cfg, arms, train_images, train_labels, device)
    return work_for(cfg, len(train_labels), test_rows, speeds, side_by_side=side_by_side), how


def _read_plan(path):
    try:
        return read_json(path, ("request", "plan", "units", "spent_seconds"))
    except FileNotFoundError:
        return None
    except DamagedFile as exc:
        print(f"budget: {path} is damaged ({exc.problem}): making a new plan")
        return None


def _replay(cfg, source, plan_path):
    """`--plan FILE`: the plan and the epochs each unit trained as an earlier run recorded them, no timing."""
    try:
        stored = read_json(source, ("plan", "units"))
    except (FileNotFoundError, DamagedFile) as exc:
        why = "no such file" if isinstance(exc, FileNotFoundError) else exc.problem
        raise FerKaggleError(f"--plan {source}: not a plan.json that a budgeted run wrote (run folder/plan.json): "
                             f"{why}") from None
    plan = Plan.from_json(stored["plan"])
    cfg = plan.run_cfg(cfg).replace(budget=plan.budget)
    print(f"plan: following {source} exactly ({_describe_models(plan.epochs)}"
          f"{', pseudo-labels' if plan.pseudo else ''}; {len(stored['units'])} units' recorded epochs); no timing, "
          f"no re-planning: the same submission as the run that recorded it")
    record = stored["units"]
    same_file = Path(plan_path).resolve() == source.resolve()
    session = Session(None if same_file else plan_path, "replay", plan, Replay(record, plan.views), record, 0.0)
    session.save()
    return cfg, session
