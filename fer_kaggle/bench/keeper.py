"""`bench keeper`: the budget's Keeper driven through whole runs on a simulated machine.

A real run takes an hour and its competing processes come when they come; here the Keeper meets the same
calls train.train_unit makes (start, after_epoch after every epoch, the last too, views, finished) on a
clock that advances by the planned work, with a competitor that slows the machine for a while. It prints
the whole run as a share of its budget for competitors at several moments: what BENCHMARKS.md's sweeps
are, and what tests/test_budget.py holds the keeper to.
"""
import random
from dataclasses import dataclass, field

from fer_kaggle.run.budget import Keeper, make_plan
from fer_kaggle.training.train import Unit

READING_SECONDS = 20  # the files, the shift check and the folds, before the plan
ENSEMBLE_SECONDS = 10  # the ensemble and the submission, after the last unit
MOMENTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)  # when `bench keeper`'s competitor comes


@dataclass
class SimulatedMachine:
    """A clock (call it for the time) on a machine that is `factor` times slower from `slow_from` until
    `slow_until`: a competing process, switching mid-epoch as a real one would. `jitter`: each piece of work
    takes up to that share longer or shorter, at random (`seed`): an epoch's noise on a shared machine."""
    slow_from: float = float("inf")
    factor: float = 1.0
    slow_until: float = float("inf")
    now: float = 1000.0
    jitter: float = 0.0
    seed: int = 0
    predict_factor: float = 1.0  # prediction takes this many times the Work's estimate (the probe under-estimates it)
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        self._random = random.Random(self.seed)

    def __call__(self):
        return self.now

    def spend(self, seconds):
        """Do `seconds` of work at the machine's own speed (slower inside the slow window); the seconds it took."""
        started = self.now
        seconds *= 1 + self._random.uniform(-self.jitter, self.jitter)
        while seconds > 1e-9:
            slow = self.slow_from <= self.now < self.slow_until
            edge = self.slow_until if slow else (self.slow_from if self.now < self.slow_from else float("inf"))
            rate = 1 / self.factor if slow else 1.0  # work done per second
            step = min(seconds / rate, edge - self.now)
            self.now += step
            seconds -= step * rate
        return self.now - started


def with_competitor(minutes, moment, factor, seconds=float("inf"), jitter=0.0, seed=0):
    """A machine at the start of a simulated run (after READING_SECONDS), `factor` times slower for `seconds`
    from `moment`, a share of a `minutes` budget counted from the run's start; `jitter`: each epoch's noise."""
    machine = SimulatedMachine(jitter=jitter, seed=seed)
    machine.slow_from = machine.now + moment * 60 * minutes - READING_SECONDS
    machine.factor, machine.slow_until = factor, machine.slow_from + seconds
    return machine


def back_and_forth(record):
    """How often the keeper moved a unit's end back the way it had just moved it (40, 41, 40 epochs: twice),
    over all the units of a run's record (a unit whose epochs were given has no start: only its refits)."""
    count = 0
    for entry in record.values():
        ends = [end for end in [entry["start"]] + [wanted for _, wanted in entry["refits"]] if end is not None]
        moves = [later > earlier for earlier, later in zip(ends, ends[1:]) if later != earlier]
        count += sum(1 for a, b in zip(moves, moves[1:]) if a != b)
    return count


def keep_a_run(keeper, plan, work, units, machine, every):
    """Every unit through `keeper` as train_unit drives it; (seconds it took, {unit name: (epochs, views)}).
    `every`: the views of the run's TTA (the plan may predict with fewer: `work`'s)."""
    begun, done = machine.now, {}
    for unit in units:
        planned = keeper.start(unit, plan.epochs[unit.backbone], done=0)
        history, epoch = [], 0
        while epoch < planned:
            history.append(machine.spend(work.epoch_seconds(unit.backbone)))
            epoch += 1
            wanted = keeper.after_epoch(unit, epoch, planned, history)
            if epoch < planned:
                planned = max(epoch + 1, wanted)  # as train._repace: never before the epoch under way ends
        views = keeper.views(unit, every)
        machine.spend(work.predict_seconds(unit.backbone) * views / work.views * machine.predict_factor)
        keeper.finished(unit)
        done[unit.name] = (planned, views)
    return machine.now - begun, done


def plan_of(cfg, work, table, minutes):
    """The plan a real run makes after READING_SECONDS."""
    return make_plan(cfg, set(), work, table, 60 * minutes - READING_SECONDS, minutes)


def plan_units(plan, folds):
    """The units a simulated run of `plan` trains, in order."""
    return [Unit(0, backbone, fold) for backbone in plan.backbones for fold in range(folds)]


def predicted_oof(plan, table, done, every, folds):
    """The ensemble OOF the table predicts for what the keeper did, {unit name: (epochs, views)} with `every`
    views in the run's TTA: each backbone at its units' mean epochs, less the mean of what their views lost."""
    epochs = {plan.arm(b): sum(done[Unit(0, b, f).name][0] for f in range(folds)) / folds for b in plan.backbones}
    lost = [0.0 if views >= every else table.views_loss(views) or 0.0 for _, views in done.values()]
    return table.ensemble_oof(epochs) - sum(lost) / len(lost)


def simulate(cfg, work, table, minutes, machine, plan=None):
    """A whole budgeted run of `cfg` on `machine`: (its seconds as a share of the budget, {unit: (epochs,
    views)}, the keeper's record), planned after READING_SECONDS as a real run is (`plan`: that plan, made
    already)."""
    seconds_left = 60 * minutes - READING_SECONDS
    plan = plan or plan_of(cfg, work, table, minutes)
    every, work = work.views, work.for_plan(plan)  # the plan's folds, views and arms' speeds, as a run keeps it
    units = plan_units(plan, work.folds)
    keeper = Keeper(plan, work, units, end=machine.now + seconds_left, record={}, clock=machine, table=table)
    seconds, done = keep_a_run(keeper, plan, work, units, machine, every)
    return (READING_SECONDS + seconds + ENSEMBLE_SECONDS) / (60 * minutes), done, keeper.record


def sweep(cfg, work, table, minutes, factor, window_seconds, moments=MOMENTS, jitter=0.0):
    """[(moment, share of the budget, epochs in all, back-and-forth refits, TTA views in all, the table's
    predicted OOF)]: a competitor `factor` times slower for `window_seconds` from each moment (a share of the
    budget); window_seconds=inf: it never leaves. `jitter`: each epoch up to that share faster or slower at
    random (a seed per moment)."""
    rows, plan = [], plan_of(cfg, work, table, minutes)
    for seed, moment in enumerate(moments):
        machine = with_competitor(minutes, moment, factor, window_seconds, jitter, seed)
        share, done, record = simulate(cfg, work, table, minutes, machine, plan)  # one plan: the same each time
        rows.append((moment, share, sum(epochs for epochs, _ in done.values()), back_and_forth(record),
                     sum(views for _, views in done.values()),
                     predicted_oof(plan, table, done, work.views, work.for_plan(plan).folds)))
    return rows


def print_sweep(cfg, work, table, minutes, factor, window_seconds, moments=MOMENTS, jitter=0.0):
    window = "until the end" if window_seconds == float("inf") else f"for {window_seconds:g} s"
    noise = f", each epoch up to {jitter:.0%} faster or slower at random" if jitter else ""
    print(f"--budget {minutes:g}: a competitor making the machine {factor:g} times slower {window}, from a share "
          f"of the budget{noise}; the whole run as a share of it (epochs of all units; units' ends moved back "
          f"and forth; TTA views of all units; the OOF the table predicts for them)")
    for moment, share, epochs, reversals, views, oof in sweep(cfg, work, table, minutes, factor, window_seconds,
                                                               moments, jitter):
        print(f"  from {moment:.2f}: {share:.2f} ({epochs}; {reversals}; {views} views; OOF {oof:.4f})")
