"""The whole competition run: CSV -> arrays -> folds -> units -> probabilities -> ensemble -> CSV.

    bash run.sh train.csv test.csv out.csv [options]      (= python -m fer_kaggle ...)
    bash run.sh fer2013.csv out.csv [options]             (one file with Usage, or a folder with train/ test/)
    bash run.sh                                           (the bundled demo sample, preset demo)

Every stage writes under --workdir (default folds/; runfolder.py owns its layout). A re-run of the
same command skips finished units and resumes an interrupted one from its last finished epoch; a
run with changed settings trains new units beside the old ones (each unit's folder names a hash of
its settings) and blends only its own. Before anything trains, every unit already in the folder is
checked (runfolder.repair_units: a damaged one is trained again) and the disk's free space is weighed
against what the units still to train will write.
"""
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
from tqdm.auto import tqdm

from fer_kaggle.run import budget
from fer_kaggle.blend import ensemble, heldout, pseudo
from fer_kaggle.data import inputs, shift
from fer_kaggle.core import runfolder
from fer_kaggle.core.config import GPU_PRESETS, PRESETS, Config
from fer_kaggle.data.competition import fingerprint as file_fingerprint
from fer_kaggle.core.errors import DamagedFile, FerKaggleError, gigabytes
from fer_kaggle.run.executor import (DevicePool, Job, LocalPool, PseudoRows, RunArrays, Sequential, cuda_devices,
                                     machine_cores)
from fer_kaggle.data.folds import make_or_load_folds
from fer_kaggle.models.backbones import DNN_COUNTERPARTS, unit_config
from fer_kaggle.core.runfolder import HOME, RunFolder
from fer_kaggle.blend.submit import check_out_path
from fer_kaggle.models.backbones import build_model
from fer_kaggle.training.train import (AMP_NAMES, Unit, augment_on, autocast_dtype, check_finished_student, is_finished,
                                       resolve_device)

def cuda_available():
    """The one place the automatic preset looks for a GPU (tests replace it: no GPU needed to test both)."""
    return torch.cuda.is_available()


def choose_preset(asked, demo, cuda):
    """(preset, why): --preset if given; else demo without files, full with a CUDA device, cpu without."""
    if asked:
        return asked, "--preset"
    if demo:
        return "demo", "no data files: the bundled sample"
    if cuda:
        return "full", "chosen automatically: a CUDA device is present; --preset overrides"
    return "cpu", "chosen automatically: no CUDA device here; --preset overrides"


def resolve(args):
    """(config, data source, out, workdir, why this preset) from the parsed command line."""
    demo = not args.paths
    if len(args.paths) not in (0, 2, 3):
        raise FerKaggleError(f"got {len(args.paths)} paths: give TRAIN TEST OUT, or DATA OUT (fer2013.csv, "
                             f"icml_face_data.csv, or a folder with train/ and test/), or none for the demo")
    preset, why = choose_preset(args.preset, demo, cuda_available())
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                 if getattr(args, f.name, None) is not None and f.name != "preset"}
    cfg = PRESETS[preset].replace(**overrides)
    if cfg.folds < 2:
        raise FerKaggleError(f"--folds {cfg.folds}: at least 2 folds are needed for out-of-fold predictions")
    unknown = [name for name in cfg.backbones if not timm.is_model(name)]
    if unknown:
        raise FerKaggleError(f"unknown backbone(s) {', '.join(unknown)}: give timm model names, "
                             f"e.g. ours: {', '.join(timm.list_models('fer_*'))}")
    if cfg.ablation:
        ablation_variants(cfg)  # refuses a backbone list without a DNN-sized CNN, before any work
    if cfg.image_size < 32:
        raise FerKaggleError(f"--image-size {cfg.image_size}: at least 32 pixels are needed")
    if not 0 < cfg.pseudo_threshold <= 1:
        raise FerKaggleError(f"--pseudo-threshold {cfg.pseudo_threshold}: must be in (0, 1]")
    if cfg.crop and not 16 <= cfg.crop < cfg.image_size:
        raise FerKaggleError(f"--crop {cfg.crop}: must be from 16 to {cfg.image_size - 1} (or 0: off)")
    if cfg.tta == "ten_crop" and not cfg.crop:
        raise FerKaggleError("--tta ten_crop needs a model trained on crops: add --crop, e.g. --crop 44")
    if demo:
        source, out = inputs.resolve([inputs.DEMO_TRAIN, inputs.DEMO_TEST]), None
    else:
        *data_paths, out = args.paths
        check_out_path(out)
        source = inputs.resolve(data_paths, args.format)
    workdir = args.workdir or HOME / ("folds/demo" if demo else "folds")
    return cfg, source, out, workdir, why


def estimate_cpu_hours(cfg, n_train, device):
    """Time one real training step of each backbone here (after an untimed one) and extrapolate to the whole
    preset: an order of magnitude, in seconds (small batches: a GPU preset's models are slow on a CPU)."""
    seconds_per_image, batch = 0.0, 8
    for backbone in cfg.backbones:
        model = build_model(backbone, device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        images = torch.randn(batch, 1, cfg.image_size, cfg.image_size)
        labels = torch.randint(0, 7, (batch,))
        for step in range(2):
            if step == 1:
                started = time.perf_counter()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
        seconds_per_image += (time.perf_counter() - started) / batch
    images_per_backbone = cfg.epochs * n_train * (cfg.folds - 1) * (2 if cfg.pseudo else 1)
    return images_per_backbone * seconds_per_image / 3600, images_per_backbone * len(cfg.backbones)


def unit_key(cfg, round_, backbone, device, fingerprints, teachers=None, plan=None):
    """(key, settings) of a unit: the short hash of every setting that changes what it learns or saves.

    A budgeted run's units name its plan: the epochs a unit trains are the plan's to decide as it goes."""
    cfg = unit_config(plan.unit_cfg(cfg, backbone) if plan else cfg, backbone)
    amp = AMP_NAMES[autocast_dtype(cfg.amp, device)]
    settings = runfolder.unit_settings(cfg, round_, augment_on(cfg, device), amp, fingerprints, teachers)
    if plan is not None:
        settings["plan"] = plan.id
    return runfolder.short_hash({**settings, "backbone": backbone}), settings


def _round_units(cfg, round_, device, fingerprints, teachers=None, variant="", backbones=None, plan=None):
    """{Unit: its key's settings} of a round (or an ablation variant): every backbone x fold."""
    units = {}
    for backbone in backbones or cfg.backbones:
        key, settings = unit_key(cfg, round_, backbone, device, fingerprints, teachers, plan)
        units.update({Unit(round_, backbone, fold, variant, key): settings for fold in range(cfg.folds)})
    return units


def _models(units):
    """The model folders of `units`, in order, once each."""
    return list(dict.fromkeys(unit.model for unit in units))


def _todo(units, workdir, executor):
    """The units of a stage still to train; says how many are finished and how the rest will run."""
    todo = [unit for unit in units if not is_finished(unit.dir(workdir))]
    stage = next(iter(units)).name.rsplit("/", 2)[0]
    print(f"{stage}: {len(units) - len(todo)} of {len(units)} units already finished"
          + (f"; training {len(todo)}, {executor.description}" if todo else ""))
    return todo


def _say_done(done, bar):
    where = "" if done.where == "here" else f", {done.where}"
    bar.write(f"{done.job.unit.name}: OOF accuracy {done.metrics['valid_acc']:.4f} ({done.seconds:.0f} s, "
              f"{done.metrics['train_rows']} training images{where})")
    sys.stdout.flush()
    bar.update()


def _round_bar(executor, total):
    """A bar over the units being trained, where units train elsewhere (one at a time, the batch bar shows)."""
    return tqdm(total=total, desc="units", unit="unit", disable=isinstance(executor, Sequential) or None,
                dynamic_ncols=True)


class Rounds:
    """Round 0, then each fold's pseudo-labelling students as soon as that fold's teachers are done.

    Fold k's students learn from the test images fold k's teachers (every backbone's fold-k unit of
    round 0) are confident about; the teachers of other folds may still be training. After each fold's
    teachers: the class-share check of that fold (shift.py), which may refuse it pseudo-labels.
    """

    def __init__(self, cfg, folder, executor, device, fingerprints, arrays, session=None):
        self.cfg, self.folder, self.executor, self.device, self.arrays = cfg, folder, executor, device, arrays
        self.session = session
        self.plan = session.plan if session else None
        self.round0, self.round1 = run_units(cfg, device, fingerprints, self.plan)
        self.teachers = _models(self.round0)
        self.students = _models(self.round1)
        self.cut = pseudo.absolute_threshold(cfg.pseudo_threshold, cfg.label_smoothing)
        self.shares, self.tables = {}, {}

    def job(self, unit, settings, rows=None):
        """A unit's job: with the plan's epochs for its backbone, kept to the budget by the session's pace."""
        cfg = self.plan.unit_cfg(self.cfg, unit.backbone) if self.plan else self.cfg
        return Job(cfg, unit, self.folder.path, str(self.device), settings, rows,
                   pace=self.session.pace if self.session else None)

    def train(self, deadline):
        workdir = self.folder.path
        todo0 = _todo(self.round0, workdir, self.executor)
        todo1 = _todo(self.round1, workdir, self.executor) if self.round1 else []
        waiting = {fold: {u for u in todo0 if u.fold == fold} for fold in range(self.cfg.folds)}
        with self.executor.start(self.arrays, deadline), _round_bar(self.executor, len(todo0) + len(todo1)) as bar:
            for unit in todo0:
                self.executor.submit(self.job(unit, self.round0[unit]))
            for fold in [fold for fold, left in waiting.items() if not left]:
                self._taught(fold, todo1)
            for done in self.executor.finished():
                _say_done(done, bar)
                if self.session:
                    self.session.unit_done(done.job.unit)
                left = waiting.get(done.job.unit.fold) if done.job.unit.round == 0 else None
                if left:
                    left.discard(done.job.unit)
                    if not left:
                        self._taught(done.job.unit.fold, todo1)

    def _taught(self, fold, todo1):
        """Fold `fold`'s teachers are done: check its class shares; release its students."""
        ids, test_probs = pseudo.teacher_probs(self.folder.path, self.teachers, fold)  # read once: for both
        _, oof_probs = pseudo.teacher_oof(self.folder.path, self.teachers, fold)
        figures = shift.fold_shares(test_probs, oof_probs, self.arrays.train_labels[self.arrays.folds != fold],
                                    self.cut)
        self.shares[fold] = figures
        warning = shift.class_share_warning(fold, figures)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        if len(self.shares) == self.cfg.folds:
            self.folder.write_shift(folds={str(k): shift.to_json(self.shares[k]) for k in sorted(self.shares)})
        if not self.round1:
            return
        refusal = shift.pseudo_guard(figures)
        if refusal:
            print(f"pseudo-labels: fold {fold} gets none: {refusal}")
        table = pseudo.fold_table(fold, ids, test_probs, self.cut, refused=bool(refusal))
        self.tables[fold] = table
        print(f"pseudo-labels: fold {fold}'s students add {len(table)} of {len(self.arrays.test_ids)} test images "
              f"(teachers' mean probability >= {self.cut:.3f}: {self.cfg.pseudo_threshold} of the "
              f"{pseudo.probability_ceiling(self.cfg.label_smoothing):.3f} a model trained with label smoothing "
              f"{self.cfg.label_smoothing} can reach)", flush=True)
        if len(self.tables) == self.cfg.folds:
            self._save_tables()
        rows = PseudoRows(*pseudo.rows_and_targets(table, self.arrays.test_ids, self.cfg.pseudo_soft))
        table_hash = pseudo.table_hash(table)
        for unit in (u for u in self.round1 if u.fold == fold):
            if unit in todo1:
                settings = {**self.round1[unit], "pseudo_rows": table_hash}
                self.executor.submit(self.job(unit, settings, rows))
            else:
                check_finished_student(unit, self.folder.path, table_hash)

    def _save_tables(self):
        table, key = pseudo.save_table(self.folder.path, [self.tables[k] for k in sorted(self.tables)])
        self.folder.write_record(pseudo_table=self.folder.pseudo_table_path(key).name)
        print("pseudo-labels added per class and fold:")
        print(pseudo.counts_per_class(table, self.cfg.folds).to_string(), flush=True)


def run_units(cfg, device, fingerprints, plan=None):
    """({Unit: key settings} of round 0, the same of round 1 (empty without pseudo-labels)) of a run."""
    round0 = _round_units(cfg, 0, device, fingerprints, plan=plan)
    round1 = _round_units(cfg, 1, device, fingerprints, _models(round0), plan=plan) if cfg.pseudo else {}
    return round0, round1


def _train_units(cfg, units, folder, executor, device, deadline, arrays):
    """Train `units` (all from the train rows: the ablations), however the executor runs them."""
    todo = _todo(units, folder.path, executor)
    jobs = [Job(cfg, unit, folder.path, str(device), units[unit]) for unit in todo]
    with _round_bar(executor, len(todo)) as bar:
        for done in executor.run(jobs, arrays, deadline):
            _say_done(done, bar)


def ablation_variants(cfg):
    """(variant, config, backbone) of the report's ablations: the first backbone that has a DNN of its size."""
    counterparts = {cnn: dnn for dnn, cnn in DNN_COUNTERPARTS.items()}
    cnn = next((b for b in cfg.backbones if b in counterparts), None)
    if cnn is None:
        raise FerKaggleError(f"--ablation compares a DNN with a CNN of its size: include one of "
                             f"{', '.join(counterparts)} in --backbones")
    uncropped = {"crop": 0, "tta": "flip"} if cfg.crop else {}  # a DNN's input size is fixed: no crops
    return [("no_normalize", cfg.replace(normalize=False), cnn),
            ("no_augment", cfg.replace(augment="none"), cnn),
            ("dnn", cfg.replace(**uncropped), counterparts[cnn])]


def _train_ablations(cfg, folder, executor, device, deadline, fingerprints, arrays):
    """Train the report's ablations; returns {variant: model folder}."""
    models = {}
    for variant, variant_cfg, backbone in ablation_variants(cfg):
        units = _round_units(variant_cfg, 0, device, fingerprints, variant=variant, backbones=[backbone])
        _train_units(variant_cfg, units, folder, executor, device, deadline, arrays)
        models[variant] = _models(units)[0]
    return models


def set_aside_old_demo(workdir):
    """Move a demo run folder made from an earlier bundled sample to `<workdir>-<its fingerprint>`.

    The bundled sample is ours, not the user's: when a new release redraws it, `bash run.sh`
    must still just work, and the old run is kept rather than deleted.
    """
    meta = RunFolder(workdir).folds_meta()
    if meta is None or meta["train_fingerprint"] == file_fingerprint(inputs.DEMO_TRAIN):
        return None
    old = meta["train_fingerprint"]
    aside = Path(workdir).with_name(f"{Path(workdir).name}-{old[:12]}")
    Path(workdir).rename(aside)
    print(f"{workdir} held a demo run on an earlier bundled sample: moved to {aside}; starting afresh")
    return aside


def run(cfg, source, out, workdir, submissions, explicit=None):
    """The whole run in `workdir`, holding its lock; returns (ensemble summary, submission path).

    `explicit`: the settings the command line gave, which a budget's plan keeps as given; None (a caller
    that built `cfg` itself): all of them, so a budget only checks that the work fits."""
    if explicit is None:
        explicit = {f.name for f in dataclasses.fields(cfg)}  # no recipe of the table's replaces the caller's
    if source.train == inputs.DEMO_TRAIN:
        set_aside_old_demo(workdir)
    with RunFolder(workdir).lock() as folder:
        return _run(cfg, source, out, folder, submissions, explicit)


def _run(cfg, source, out, folder, submissions, explicit):
    started = time.perf_counter()
    deadline = time.monotonic() + 60 * cfg.time_limit if cfg.time_limit else None
    executor = make_executor(cfg, folder.path)  # first: Ray connects and checks the shared folder
    try:
        return _run_on(cfg, source, out, folder, submissions, executor, deadline, started, explicit)
    finally:
        executor.shutdown()


def _run_on(cfg, source, out, folder, submissions, executor, deadline, started, explicit):
    workdir, device = folder.path, executor.device
    print(f"reading {source.describe()}")
    data, log = inputs.load(source, folder.cache_dir)
    for line in log:
        print(line)
    train_x, train_y, test_ids, test_x = data.train_images, data.train_labels, data.test_ids, data.test_images
    print(f"train: {len(train_y)} images, test: {len(test_ids)} images, device: {device}")
    if cfg.preset in GPU_PRESETS and device.type == "cpu" and cfg.device != "cpu":
        hours, images = estimate_cpu_hours(cfg, len(train_y), device)
        raise FerKaggleError(
            f"preset '{cfg.preset}' trains {images / 1e6:.1f}M images; on this CPU that takes about "
            f"{hours:.0f} hours. Run it on a GPU, pick --preset cpu (the preset for a machine without a GPU), "
            f"or add --device cpu to run it here anyway")

    _check_shift(cfg, source, folder, train_x, test_x)  # before any training: a shifted test set costs a submission
    if data.test_labels is not None:
        heldout.save_labels(workdir, test_ids, data.test_labels, data.test_usage)
    runfolder.repair_units(folder)  # before the plan counts what is finished: a damaged unit trains again

    # the arrays' own hashes, not the files': the same faces in another file form reuse the units
    fingerprints = (runfolder.arrays_fingerprint(train_x, train_y),
                    runfolder.arrays_fingerprint(np.asarray(test_ids).astype(str), test_x))
    def units_to_train(cfg, plan):  # the units the budget's time is shared among: finished ones cost nothing
        return [unit for round_ in run_units(cfg, device, fingerprints, plan) for unit in round_
                if not is_finished(unit.dir(workdir))]

    # the plan comes before the split: it may choose the folds (a table's arm), unless this folder has a split
    cfg, session = budget.plan_run(cfg, explicit, folder.plan_json, (train_x, train_y, len(test_ids)), device,
                                   units_to_train, isinstance(executor, Sequential), time.perf_counter() - started,
                                   fingerprints, executor.side_by_side, split_folds=_split_folds(folder))
    folds, meta = make_or_load_folds(workdir, train_x, train_y, data.train_fingerprint, cfg.folds, cfg.seed)
    print(f"folds: {cfg.folds} stratified folds (seed {cfg.seed}); {meta['duplicate_groups']} groups of "
          f"identical images ({meta['rows_in_duplicate_groups']} rows) each kept inside one fold")
    arrays = RunArrays(train_x, train_y, folds, test_ids, test_x)
    rounds = Rounds(cfg, folder, executor, device, fingerprints, arrays, session)
    needed = _check_disk(folder, _bytes_to_write(cfg, rounds, arrays))
    try:
        return _train_and_blend(cfg, folder, executor, device, deadline, fingerprints, arrays, rounds, session,
                                submissions, out, started, train_y)
    except OSError as exc:
        exc.run_needs = needed  # for the full disk's message (errors.machine_fault)
        raise


def _split_folds(folder):
    """The folds of the split this folder already holds (its units were trained on it), or None: none yet, or
    a damaged one (make_or_load_folds says what then)."""
    try:
        meta = folder.folds_meta()
    except DamagedFile:
        return None
    return meta and meta["folds"]


def _train_and_blend(cfg, folder, executor, device, deadline, fingerprints, arrays, rounds, session, submissions,
                     out, started, train_y):
    workdir = folder.path
    models = rounds.teachers + rounds.students
    folder.write_record(preset=cfg.preset, config=cfg.to_dict(), models=models, ablations={}, pseudo_table=None,
                        plan=session.plan.to_json() if session else None, started=time.time(), finished=None)
    try:
        rounds.train(deadline)
    finally:
        if session:
            session.save()  # the minutes spent, for the same command resumed
    if cfg.pseudo:
        teachers, labels = ensemble.load_models(workdir, rounds.teachers)
        students, _ = ensemble.load_models(workdir, rounds.students)
        before, after = (ensemble.best_oof_accuracy(models, labels) for models in (teachers, students))
        print(f"pseudo-labelling: ensemble OOF accuracy {before:.4f} before, {after:.4f} after")

    if cfg.ablation:
        folder.write_record(ablations=_train_ablations(cfg, folder, executor, device, deadline, fingerprints, arrays))
    others = sorted(set(folder.model_names()) - set(models))
    if others:
        print(f"ensemble: this run's {len(models)} models; {len(others)} other model(s) in {workdir} "
              f"(other settings) left out: `python -m fer_kaggle.ensemble --workdir {workdir} --all` blends them too")
    summary, path = ensemble.run(workdir, submissions, out, names=models)
    folder.write_record(finished=time.time())
    if session:
        session.save(finished=True)
    kept = summary["blends"][summary["kept"]]
    print(f"\nsubmission: {path}" + (f" (and {out})" if out else ""))
    print(f"ensemble OOF accuracy: {kept['oof_acc']:.4f} ({summary['kept']} of {len(summary['models'])} models)"
          f"; majority-class rate {np.bincount(train_y).max() / len(train_y):.4f}")
    scores = heldout.score(workdir, path)
    if scores is not None:
        print(heldout.describe(scores))
    print(f"total time: {time.perf_counter() - started:.0f} s"
          + (f"; budget {cfg.budget:g} minutes, {session.spent() / 60:.1f} used" if session else ""))
    return summary, path


def make_executor(cfg, workdir):
    """The executor of `cfg`, its `device` set: Ray where asked (its device is the cluster's), else a
    DevicePool on a machine with several GPUs (unless --device names one), else Sequential for one unit at
    a time or on one GPU (units would only queue for it), else a local pool."""
    threads = cfg.unit_threads or max(1, machine_cores() // max(1, cfg.parallel_units))
    if cfg.executor == "ray":
        from fer_kaggle.run.ray_executor import RayCluster  # Ray, an optional extra, loads only when asked for
        return RayCluster(cfg.ray_address or os.environ.get("RAY_ADDRESS", ""), threads, workdir, cfg.device)
    device = resolve_device(cfg.device)
    gpus = cuda_devices() if device.type == "cuda" and device.index is None else []
    if len(gpus) > 1:
        executor = DevicePool(gpus, cfg.unit_threads or max(1, machine_cores() // len(gpus)))
    elif cfg.parallel_units <= 1 or device.type != "cpu":
        executor = Sequential(cfg.unit_threads or None)
    else:
        executor = LocalPool(cfg.parallel_units, threads)
    executor.device = device
    return executor


def _bytes_to_write(cfg, rounds, arrays):
    """About what the units still to train write: each a checkpoint (the weights, the optimizer's state, an EMA
    copy; twice while the atomic write replaces it) and its probabilities (three TTA averages of its held-out
    and test rows)."""
    held_out = int(np.bincount(arrays.folds[arrays.folds >= 0]).max()) if (arrays.folds >= 0).any() else 0
    probs = 2 * 3 * (held_out + len(arrays.test_ids)) * 7 * 4  # oof.npz and test.npz, float32
    copies = 1 + (1 if cfg.optimizer == "sgd" else 2) + (1 if cfg.ema else 0)
    sizes = {}
    total = 0
    for unit in [*rounds.round0, *rounds.round1]:
        if is_finished(unit.dir(rounds.folder.path)):
            continue
        if unit.backbone not in sizes:
            sizes[unit.backbone] = sum(p.numel() for p in build_model(unit.backbone, torch.device("cpu")).parameters())
        total += 2 * 4 * copies * sizes[unit.backbone] + probs
    return total


def _check_disk(folder, needed):
    """Refuse at once a run whose units clearly cannot fit on the disk; returns `needed`."""
    free = shutil.disk_usage(folder.path).free
    if needed > free:
        raise FerKaggleError(f"{folder} has {gigabytes(free)} free, and the units still to train write about "
                             f"{gigabytes(needed)}: free some space or give --workdir on another disk")
    return needed


def _check_shift(cfg, source, folder, train_x, test_x):
    """Train against test images before training: the figures, a `warning:` line, --strict-shift's stop."""
    figures = shift.check_inputs(train_x, test_x)
    folder.write_shift(inputs=figures)
    print(shift.describe_inputs(figures))
    names = (source.train, source.test) if source.kind != "combined" else (
        f"the Training rows of {source.train}", "its test rows")
    warning = shift.input_warning(figures, *names)
    if warning is None:
        return
    print(warning, file=sys.stderr, flush=True)
    if cfg.strict_shift:
        raise FerKaggleError(f"--strict-shift: {warning.removeprefix('warning: ')}; nothing was trained")


def command(args):
    """`fer-kaggle run` (the default command): cli.py parsed args and handles errors."""
    cfg, source, out, workdir, why = resolve(args)
    print(f"preset {cfg.preset} ({why})")
    explicit = {f.name for f in dataclasses.fields(Config) if getattr(args, f.name, None) is not None}
    run(cfg, source, out, workdir, args.submissions, explicit)
    args.workdir = workdir  # where --report (cli.py) finds the run
    return 0
