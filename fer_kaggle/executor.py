"""Stage 4c: how a round's units run: one after another here, or side by side in local processes.

    Sequential   each unit in this process, with all of torch's threads (the default)
    LocalPool    `--parallel-units N`: N units at a time, each in a spawned process with
                 cores // N torch threads (the cpu preset's 2 on two cores: small CPU models
                 use one thread each better than one model uses two; BENCHMARKS.md measures it)

Both take Jobs and yield (job, metrics) as units finish, so the pipeline does not know which
one runs; a unit writes only its own folder, atomically, so either can be stopped and resumed.
"""
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import torch

from . import train
from .train import Unit, UnitData


@dataclass
class Job:
    """One unit to train and the arrays it learns from and predicts."""
    cfg: object
    unit: Unit
    workdir: object
    data: UnitData
    device: str
    key_settings: dict = None  # what the unit's key stands for (runfolder.unit_settings)


def run_job(job, deadline):
    return train.train_unit(job.cfg, job.unit, job.workdir, job.data, torch.device(job.device), deadline,
                            job.key_settings)


class Sequential:
    """Units one after another in this process."""
    description = "one unit at a time"

    def run(self, jobs, deadline):
        for job in jobs:
            yield job, run_job(job, deadline)


def _start_worker(threads):
    torch.set_num_threads(threads)
    train.BATCH_BARS = False  # several units print at once: their epoch lines, not fighting batch bars


class LocalPool:
    """`processes` units at a time, each in a spawned process with `threads` torch threads."""

    def __init__(self, processes, threads):
        self.processes, self.threads = processes, threads
        self.description = f"{processes} units side by side, {threads} thread{'s' * (threads > 1)} each"

    def run(self, jobs, deadline):
        # spawn, not fork: a forked child inherits the parent's OpenMP thread pool in an undefined state
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.processes, mp_context=context, initializer=_start_worker,
                                 initargs=(self.threads,)) as pool:
            futures = {pool.submit(run_job, job, deadline): job for job in jobs}
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            except BaseException:
                # An error, the time limit or Ctrl-C: start no new unit; the running ones stop at
                # their next epoch end (the deadline) or now (Ctrl-C), their finished epochs saved.
                for future in futures:
                    future.cancel()
                raise


def make_executor(parallel_units, device):
    """Sequential for one unit at a time or on a GPU (one device: units would only queue for it)."""
    if parallel_units <= 1 or device.type != "cpu":
        return Sequential()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return LocalPool(parallel_units, max(1, cores // parallel_units))
