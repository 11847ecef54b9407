"""Stage 4c: how a run's units are trained: here, in local processes, or on a Ray cluster.

    Sequential   one unit after another in this process, with all of torch's threads (the default)
    LocalPool    `--parallel-units N`: N units at a time, each in a spawned process with cores // N
                 torch threads (small CPU models use one thread each about as well as one model uses two:
                 BENCHMARKS.md measures it)
    DevicePool   a machine with several CUDA GPUs (Kaggle's two T4s): one unit per GPU at a time, each in a
                 spawned process, without Ray (the default there; `--device cuda:N` keeps to one GPU)
    RayCluster   `--executor ray`: each unit a Ray task, one GPU per unit where the cluster has GPUs, else
                 a set number of CPU threads; a local Ray instance, or the cluster at --ray-address /
                 RAY_ADDRESS. The run folder must be on storage every node shares (checked at the start,
                 and on each node that joins later).

All three are used the same way, so the pipeline does not know which one runs:

    executor = make_executor(cfg, workdir)   # Ray: connects, checks the shared folder
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
import socket
import time
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import __version__, recipe, train
from .errors import FerKaggleError
from .train import TimeLimitReached, Unit, UnitData


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


def _threads(n):
    return f"{n} thread{'s' * (n > 1)}"


def _as_worker(threads):
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
        self.description = "one unit at a time" + (f", {_threads(threads)}" if threads else "")

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
    _as_worker(threads)


def _pool_job(job, deadline):
    return (*run_job(job, _WORKER_ARRAYS, deadline), f"process {os.getpid()}")


class LocalPool(Slots):
    """`processes` units at a time, each in a spawned process with `threads` torch threads."""

    def __init__(self, processes, threads):
        self.processes, self.threads, self.slots = processes, threads, processes
        self.description = f"{processes} units side by side, {_threads(threads)} each"

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
        self.description = f"one unit per GPU at a time on {', '.join(devices)}, {_threads(threads)} each"

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


# ---------------------------------------------------------------- Ray

RAY_RETRIES = 3
RAY_MISSING = ("--executor ray needs Ray, an optional extra: pip install 'fer_kaggle[ray]' "
               "(or pip install 'ray>=2.9') on every machine that runs units")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise FerKaggleError(RAY_MISSING) from None
    return ray


def _node_label(address, node_id):
    """A Ray node as the progress lines and errors name it: its address and the start of its node id."""
    return f"node {address} {node_id[:8]}"


def _node_name():
    """The label of the node this task runs on."""
    import ray
    return _node_label(ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id())


def _described(node):
    """The label of a node as ray.nodes() lists it."""
    return _node_label(node["NodeManagerAddress"], node["NodeID"])


def _count(node, resource):
    """How many of a resource ("CPU", "GPU") a node as ray.nodes() lists it has."""
    return int(node["Resources"].get(resource, 0))


def _ray_unit(job, arrays, deadline_wall, threads):
    """A Ray task: one unit, with `threads` torch threads. The deadline comes as wall-clock time,
    because monotonic clocks are not comparable across machines."""
    deadline = None if deadline_wall is None else time.monotonic() + (deadline_wall - time.time())
    _as_worker(threads)
    metrics, seconds = run_job(job, arrays, deadline)
    return metrics, seconds, _node_name()


def _probe_node(workdir, token, version):
    """A Ray task pinned to one node: (its name, what is wrong there or None). Does it run this version of
    the package, and can it read the driver's probe file in the run folder and write its own?"""
    node, folder = _node_name(), Path(workdir)
    if __version__ != version:
        return node, (f"it runs fer_kaggle {__version__}, the starting machine {version}: install the "
                      f"same version on every node")
    shared = "Put --workdir on storage that every node mounts at the same path"
    try:
        seen = (folder / ".probe-driver").read_text()
        if seen != token:
            return node, f"its {folder} is another folder (the probe file there holds another token). {shared}"
        (folder / f".probe-{uuid.uuid4().hex}").write_text(f"{token} {node}")
    except OSError as exc:
        return node, f"the run folder {folder} is not shared with it: {exc.strerror or exc} ({exc.filename}). {shared}"
    return node, None


class RayCluster(Slots):
    """Each unit a Ray task: one GPU per unit on GPUs, `threads` CPU threads per unit on CPUs.

    Nodes that join during the run get units too, once they pass the shared-folder check: before units
    start and at least every `poll_s` seconds, the alive nodes are listed again. A joined node that fails
    the check stops the run, since Ray would schedule units on it all the same."""

    poll_s = 30

    def __init__(self, address, threads, workdir, device_choice):
        self.ray = _import_ray()
        self.workdir = Path(workdir).resolve()
        if address:
            _check_listening(address)
        try:  # on any failure, shut Ray down: a failed Ray Client connection leaves its state behind too
            self._connect(address)
            nodes = self._alive()
            self._plan(nodes, threads, device_choice)
            self.description = (f"Ray tasks on {len(nodes)} node(s) of {address or 'a local instance'}, "
                                + ("one GPU each" if self.device.type == "cuda" else
                                   f"{_threads(threads)} each"))
            self.check_shared_folder(nodes)
            self.nodes = {node["NodeID"] for node in nodes}
        except BaseException:
            self.ray.shutdown()
            raise

    def _connect(self, address):
        if not address:  # a local instance over this machine's cores (and GPUs, which Ray finds itself)
            self.ray.init(address="local", num_cpus=machine_cores(), include_dashboard=False, log_to_driver=True)
            return
        try:
            self.ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:  # another Ray or Python version there; a
            # ray:// (Ray Client) address without the ray[client] extra
            raise FerKaggleError(f"cannot join the Ray cluster at {address}: {exc}") from None

    def _plan(self, nodes, threads, device_choice):
        """The units' device (the nodes', not necessarily this machine's) and what each task asks for."""
        gpus = sum(_count(node, "GPU") for node in nodes)
        on_gpus = device_choice == "cuda" or (device_choice == "auto" and gpus > 0)
        if on_gpus and not gpus:
            raise FerKaggleError("--device cuda: the Ray cluster has no GPU (`ray status` lists its resources)")
        largest = max(_count(node, "CPU") for node in nodes)
        if not on_gpus and threads > largest:  # Ray would queue such a task forever
            raise FerKaggleError(f"each unit asks for {threads} CPU threads but the largest Ray node has {largest} "
                                 f"CPUs: give --unit-threads {largest} or less")
        self.device, self.threads = torch.device("cuda" if on_gpus else "cpu"), threads
        self.resources = {"num_gpus": 1, "num_cpus": 1} if on_gpus else {"num_cpus": threads}
        self.slots = self._slots(nodes)

    def _alive(self):
        return [node for node in self.ray.nodes() if node["Alive"]]

    def _slots(self, nodes):
        """As many units at a time as `nodes` hold: one per GPU, or one per `threads` CPUs of each node."""
        if self.device.type == "cuda":
            return sum(_count(node, "GPU") for node in nodes)
        return sum(_count(node, "CPU") // self.threads for node in nodes)

    def refresh(self):
        """Nodes that joined since the last look: check that they share the run folder, then count their
        slots; nodes that died are no longer counted (Ray reruns their units elsewhere)."""
        nodes = self._alive()
        joined = [node for node in nodes if node["NodeID"] not in self.nodes]
        if joined:
            try:
                self.check_shared_folder(joined)
            except FerKaggleError as exc:
                raise FerKaggleError(f"{exc} (that node joined the Ray cluster during the run; the running units "
                                     f"were stopped and keep their last epoch: fix or remove that node, then "
                                     f"run the same command again)") from None
            for node in joined:
                tqdm.write(f"Ray: {_described(node)} joined the cluster: {self._slots([node])} more unit(s) at "
                           f"a time")  # above the round's bar
        self.nodes |= {node["NodeID"] for node in joined}
        self.slots = self._slots(nodes)

    def check_shared_folder(self, nodes, timeout=120):
        """Every node writes and reads a probe file in the run folder; name the first that cannot."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        ray, token = self.ray, uuid.uuid4().hex
        self.workdir.mkdir(parents=True, exist_ok=True)
        driver_probe = self.workdir / ".probe-driver"
        driver_probe.write_text(token)
        probe = ray.remote(_probe_node)
        refs = {probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(self.workdir), token, __version__): n for n in nodes}
        try:
            ready, missing = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
            if missing:
                node = refs[missing[0]]
                raise FerKaggleError(f"{_described(node)} did not answer the shared-folder check in {timeout} s")
            for ref in ready:
                node = refs[ref]
                try:
                    name, problem = ray.get(ref)
                except ray.exceptions.RayError as exc:  # e.g. fer_kaggle not installed on that node
                    raise FerKaggleError(f"{_described(node)} could not run the shared-folder check: "
                                         f"{_cause(exc)}") from None
                if problem:
                    raise FerKaggleError(f"{name}: {problem}")
            written = list(self.workdir.glob(".probe-*"))
            if len(written) != len(nodes) + 1:
                raise FerKaggleError(f"the run folder {self.workdir}: {len(nodes)} node(s) wrote a probe file "
                                     f"there but {len(written) - 1} are seen from {socket.gethostname()}")
        finally:
            for path in self.workdir.glob(".probe-*"):
                path.unlink(missing_ok=True)

    def open(self, arrays):
        self.arrays_ref = self.ray.put(arrays)  # to each node once, not with every unit
        self.deadline_wall = None if self.deadline is None else time.time() + (self.deadline - time.monotonic())
        # A task whose node or worker process dies is run again elsewhere (RAY_RETRIES times): the unit
        # resumes from its last checkpoint in the shared folder. An error of the unit's own is not retried.
        self.task = self.ray.remote(_ray_unit).options(**self.resources, max_retries=RAY_RETRIES,
                                                        retry_exceptions=False)

    def launch(self, job):
        return self.task.remote(job, self.arrays_ref, self.deadline_wall, self.threads)

    def wait_one(self, refs):
        ready = self.ray.wait(refs, num_returns=1, timeout=self.poll_s)[0]
        return ready[0] if ready else None

    def result(self, ref, job):
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # our own errors as they are; Ray's (a lost node) named
            cause = _cause(exc)
            if isinstance(cause, (FerKaggleError, TimeLimitReached)):
                raise cause from None
            raise FerKaggleError(f"{job.unit.name} failed on Ray: {cause}") from None

    def close(self, stopped):
        """Ctrl-C or an error: kill the running units now (each resumes from its last checkpoint). At
        the time limit the running ones stop by themselves after their epoch: wait for those."""
        if not (stopped and self.running):
            return
        if self.deadline_wall is not None and time.time() > self.deadline_wall:
            self.ray.wait(list(self.running), num_returns=len(self.running))
            return
        for ref in self.running:
            self.ray.cancel(ref, force=True)

    def shutdown(self):
        self.ray.shutdown()  # stops a local instance; from a cluster it disconnects, the cluster runs on


def _check_listening(address, timeout=10):
    """Fail at once when nothing listens at HOST:PORT or ray://HOST:PORT (Ray itself would retry for
    minutes, or 30 s for Ray Client)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if "://" in host or not port.isdigit():
        return  # "auto", or another scheme: Ray's own rules
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        head = "ray start --head --ray-client-server-port" if address.startswith("ray://") else "ray start --head --port"
        raise FerKaggleError(f"--ray-address {address}: nothing answers there ({exc.strerror or exc}); start the "
                             f"cluster's head first ({head} {port}) or check the address") from None


def _cause(exc):
    """The exception a Ray task raised, without Ray's wrapping."""
    cause = getattr(exc, "cause", None)
    return cause if cause is not None else exc


def make_executor(cfg, workdir):
    """The executor of `cfg`, its `device` set: Ray where asked (its device is the cluster's), else a
    DevicePool on a machine with several GPUs (unless --device names one), else Sequential for one unit at
    a time or on one GPU (units would only queue for it), else a local pool."""
    threads = cfg.unit_threads or max(1, machine_cores() // max(1, cfg.parallel_units))
    if cfg.executor == "ray":
        return RayCluster(cfg.ray_address or os.environ.get("RAY_ADDRESS", ""), threads, workdir, cfg.device)
    device = train.resolve_device(cfg.device)
    gpus = cuda_devices() if device.type == "cuda" and device.index is None else []
    if len(gpus) > 1:
        executor = DevicePool(gpus, cfg.unit_threads or max(1, machine_cores() // len(gpus)))
    elif cfg.parallel_units <= 1 or device.type != "cpu":
        executor = Sequential(cfg.unit_threads or None)
    else:
        executor = LocalPool(cfg.parallel_units, threads)
    executor.device = device
    return executor
