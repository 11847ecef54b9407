"""`--executor ray`: each unit a Ray task, on this machine or on the cluster at --ray-address / RAY_ADDRESS.

One GPU per unit where the cluster has GPUs, else a set number of CPU threads. The run folder must be on
storage every node shares: checked at the start, and on each node that joins later. Ray is an optional
extra (pip install 'fer_kaggle[ray]'): nothing here is imported unless a run asks for it.
"""
import socket
import time
import uuid
from pathlib import Path

import torch
from tqdm import tqdm

from fer_kaggle import __version__
from fer_kaggle.core.errors import FerKaggleError, TimeLimitReached
from fer_kaggle.run.executor import Slots, as_worker, machine_cores, run_job, threads_text


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
    as_worker(threads)
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

    poll_s = 5  # listing the nodes is one small request to the cluster's head: a joined node is used within seconds

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
                                   f"{threads_text(threads)} each"))
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


