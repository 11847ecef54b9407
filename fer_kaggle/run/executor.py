"""Where a run's units train: here, in local processes, or one per GPU (Ray: ray_executor.py).

    Sequential   one unit after another in this process, with all of torch's threads (the default)
    LocalPool    `--parallel-units N`: N units at a time, each in a spawned process with cores // N
                 torch threads (small CPU models use one thread each about as well as one model uses two:
                 BENCHMARKS.md measures it)
    DevicePool   a machine with several CUDA GPUs (Kaggle's two T4s): one unit per GPU at a time, each in a
                 spawned process, without Ray (the default there; `--device cuda:N` keeps to one GPU)
    RayCluster   `--executor ray`: each unit a Ray task (ray_executor.py)

All are used the same way, so the pipeline does not know which one runs:

    executor = pipeline.make_executor(cfg, workdir)   # Ray: connects, checks the shared folder
    with executor.start(arrays, deadline):
        executor.submit(job)                 # any time, also while units are running
        for done in executor.finished():     # as units finish, until none is pending
            ...
    executor.shutdown()

The run's arrays go to each worker once; a Job is small: which unit, and for a pseudo-labelling student,
which test rows it adds with which targets. A unit writes only its own folder, atomically, resuming from
its last checkpoint, and hands back a finished unit as it is: any executor can be stopped and resumed,
and a task that Ray runs twice (a node died) does no harm.
"""
import dataclasses
import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import torch

from fer_kaggle.training import recipe, train
from fer_kaggle.core.errors import TimeLimitReached
from fer_kaggle.training.train import Unit, UnitData


@dataclass
class RunArrays:
    """The run's arrays, read once: every unit's training, held-out and test rows come from them."""
    train_images: np.ndarray
    train_labels: np.ndarray
    folds: np.ndarray        # fold of each train row (-1: in no held-out fold; tests use it)
    test_ids: np.ndarray
    test_images: np.ndarray

    def unit_data(self, fold, pseudo=None):
        """Fold `fold`'s UnitData: the rows outside it, plus a student's pseudo-labelled test rows."""
        inside = self.folds != fold
        images, labels = self.train_images[inside], self.train_labels[inside]
        if pseudo is not None and len(pseudo.rows):
            if pseudo.targets.ndim == 2:  # soft pseudo-labels: every training row becomes a probability vector
                labels = recipe.targets(labels)
            images = np.concatenate([images, self.test_images[pseudo.rows]])
            labels = np.concatenate([labels, pseudo.targets])
        valid = np.flatnonzero(self.folds == fold)
        return UnitData(images, labels, valid, self.train_images[valid], self.train_labels[valid],
                        self.test_ids, self.test_images)


@dataclass
class PseudoRows:
    """A student's extra rows: positions in the test arrays and their targets (labels, or probabilities)."""
    rows: np.ndarray
    targets: np.ndarray


@dataclass
class Job:
    """One unit to train."""
    cfg: object
    unit: Unit
    workdir: object
    device: str
    key_settings: dict = None  # what the unit's key stands for (runfolder.unit_settings)
    pseudo: PseudoRows = None  # round 1: the test rows it learns from
    pace: object = None        # a budgeted run's budget.Keeper (units one at a time, in this process)


@dataclass
class Done:
    """A finished unit: its job, its metrics, and where and for how long it trained."""
    job: Job
    metrics: dict
    where: str
    seconds: float


def run_job(job, arrays, deadline):
    """Train one job's unit here; (metrics, seconds)."""
    started = time.perf_counter()
    data = arrays.unit_data(job.unit.fold, job.pseudo)
    metrics = train.train_unit(job.cfg, job.unit, job.workdir, data, torch.device(job.device), deadline,
                               job.key_settings, job.pace)
    return metrics, time.perf_counter() - started


def machine_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_text(n):
    """"1 thread", "4 threads": for the lines that say how units run."""
    return f"{n} thread{'s' * (n > 1)}"


def as_worker(threads):
    """In a pool process or a Ray task: `threads` torch threads, and epoch lines instead of batch bars
    (several units print at once)."""
    torch.set_num_threads(threads)
    train.BATCH_BARS = False


class Executor:
    """What every executor shares: the context of a session, and running a list of jobs to the end."""

    side_by_side = 1  # units a budget plans as running at once at the measured speed (DevicePool: one per GPU)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        self.close(stopped=kind is not None)
        return False

    def shutdown(self):
        """Release what the executor holds once the run is over (Ray: its connection)."""

    def run(self, jobs, arrays, deadline):
        """Every job of a fixed list: yields Done as each finishes."""
        with self.start(arrays, deadline):
            for job in jobs:
                self.submit(job)
            yield from self.finished()


class Sequential(Executor):
    """Units one after another in this process (`threads`: torch threads meanwhile; None: as they are)."""

    def __init__(self, threads=None):
        self.threads = threads
        self.description = "one unit at a time" + (f", {threads_text(threads)}" if threads else "")

    def start(self, arrays, deadline):
        self.arrays, self.deadline, self.queue = arrays, deadline, deque()
        self.threads_before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        return self

    def submit(self, job):
        self.queue.append(job)

    def finished(self):
        while self.queue:
            job = self.queue.popleft()
            metrics, seconds = run_job(job, self.arrays, self.deadline)
            yield Done(job, metrics, "here", seconds)

    def close(self, stopped):
        torch.set_num_threads(self.threads_before)


class Slots(Executor):
    """Units elsewhere (processes, Ray tasks): at most `slots` started at a time, and once the time limit
    has passed, none started after the first. So every unit started trains at least an epoch and stops
    at its epoch's end (train_unit's rule, as one at a time), none waits in a queue to start past the
    limit, and a repeated run with a short --time-limit always moves on. Subclasses launch a job, wait
    for one of the running to end (or for a while: None), fetch its result, and may count their slots
    again before units are started (Ray: nodes joined or left)."""

    def start(self, arrays, deadline):
        self.deadline, self.queue, self.running, self.launched = deadline, deque(), {}, 0
        self.open(arrays)
        return self

    def submit(self, job):
        self.queue.append(job)
        self._fill()

    def refresh(self):
        """Count the slots again before units start: a fixed pool has nothing to do."""

    def _fill(self):
        if self.queue:
            self.refresh()
        while self.queue and len(self.running) < self.slots:
            if self.launched and self.deadline is not None and time.monotonic() > self.deadline:
                return
            job = self.queue.popleft()
            self.running[self.launch(job)] = job
            self.launched += 1

    def finished(self):
        while self.running:
            handle = self.wait_one(list(self.running))
            if handle is None:  # none ended in a while: slots may have been added meanwhile
                self._fill()
                continue
            job = self.running.pop(handle)
            metrics, seconds, where = self.result(handle, job)
            yield Done(job, metrics, where, seconds)
            self._fill()
        if self.queue:  # past the time limit: the rest were not started
            raise TimeLimitReached(f"{self.queue[0].unit.name} and {len(self.queue) - 1} more units not started")


_WORKER_ARRAYS = None  # a pool worker's copy of the run's arrays (sent once, by its initializer)


def _start_worker(threads, arrays):
    global _WORKER_ARRAYS
    _WORKER_ARRAYS = arrays
    as_worker(threads)


def _pool_job(job, deadline):
    return (*run_job(job, _WORKER_ARRAYS, deadline), f"process {os.getpid()}")


class LocalPool(Slots):
    """`processes` units at a time, each in a spawned process with `threads` torch threads."""

    def __init__(self, processes, threads):
        self.processes, self.threads, self.slots = processes, threads, processes
        self.description = f"{processes} units side by side, {threads_text(threads)} each"

    def open(self, arrays):
        # spawn, not fork: a forked child inherits the parent's OpenMP thread pool in an undefined state
        context = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(self.processes, mp_context=context, initializer=_start_worker,
                                        initargs=(self.threads, arrays))

    def launch(self, job):
        return self.pool.submit(_pool_job, job, self.deadline)

    def wait_one(self, futures):
        return next(iter(wait(futures, return_when=FIRST_COMPLETED)[0]))

    def result(self, future, job):
        return future.result()

    def close(self, stopped):
        # An error, the time limit or Ctrl-C: the running units stop at their next epoch end (the
        # deadline) or now (Ctrl-C: the signal reaches the workers too), their finished epochs saved.
        self.pool.shutdown(wait=True, cancel_futures=True)


class DevicePool(LocalPool):
    """One unit per device at a time, each in a spawned process: a unit launched takes a free device and
    gives it back when it ends, so no two running units share one."""

    def __init__(self, devices, threads):
        super().__init__(len(devices), threads)
        self.devices, self.free, self.device_of = list(devices), list(devices), {}
        self.side_by_side = len(devices)
        self.description = f"one unit per GPU at a time on {', '.join(devices)}, {threads_text(threads)} each"

    def launch(self, job):
        device = self.free.pop(0)
        future = self.pool.submit(_pool_job, dataclasses.replace(job, device=device), self.deadline)
        self.device_of[future] = device
        return future

    def result(self, future, job):
        device = self.device_of.pop(future)
        self.free.append(device)
        metrics, seconds, where = future.result()
        return metrics, seconds, f"{where} on {device}"


def cuda_devices():
    """The CUDA GPUs torch sees here (CUDA_VISIBLE_DEVICES narrows them), as device names."""
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
