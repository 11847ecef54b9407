"""--executor ray: the same files as the sequential loop, on a local Ray instance (stopped by Ctrl-C and resumed)
and on a two-node cluster started on this machine (usage statistics off); the shared-folder check; nodes joining
and dying; Ray missing.

The cluster is started once for the module: a head and a worker node as separate processes, one CPU
each, given --node-ip-address 127.0.0.1. (Ray maps that to the machine's own address for any cluster
that can take a second node, services.resolve_ip_for_localhost; its loopback-only mode,
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, refuses a second node. The test machine's network is closed.)
The worker runs in its own mount namespace where one folder is an empty tmpfs: a run folder there is
one that node cannot see, as on a cluster whose storage is not shared. One test adds two nodes during a run
(one that shares the run folder, one that does not) and removes them after.
"""
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from fer_kaggle import cli
from fer_kaggle.data.inputs import DEMO_TEST, DEMO_TRAIN, demo_head

# The runs learn from 900 train rows and predict 100: Ray's own start-up, not training, is what these tests wait
# for.
SAMPLE = Path(tempfile.mkdtemp(prefix="fer_kaggle-ray-"))
SMALL_TRAIN = demo_head("train.csv.xz", 900, SAMPLE / "train.csv")
SMALL_TEST = demo_head("test.csv.xz", 100, SAMPLE / "test.csv")

# no usage statistics, no authentication token to hand around between the test's processes
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           # a killed node is known dead in about 3 s, not Ray's default half a minute (the head's health checks)
           "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "2000",
           "RAY_health_check_failure_threshold": "3"}
# --budget 0: the demo preset's 3-minute budget would refuse the longer runs below on a slow or busy machine
TINY = ["--preset", "demo", "--folds", "2", "--epochs", "1", "--pseudo", "--pseudo-threshold", "0.2", "--budget", "0"]
# a node's `ray start` options: one CPU, the loopback address, in the foreground (its process group is the node)
NODE_OPTIONS = ["--num-cpus", "1", "--num-gpus", "0", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
                "--block"]
NODE = re.compile(r"^(round\d/\S+): OOF accuracy .*, node [\d.]+ ([0-9a-f]{8})\)$", re.M)


@pytest.fixture(scope="module", autouse=True)
def ray_env():
    before = {name: os.environ.get(name) for name in RAY_ENV}
    os.environ.update(RAY_ENV)
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _run(tmp, name, *options, capsys=None):
    """The pipeline on the bundled sample in `tmp/name`; (exit code, stdout+stderr, run folder)."""
    workdir = tmp / name
    workdir.mkdir()
    code = cli.main([str(SMALL_TRAIN), str(SMALL_TEST), str(workdir / "out.csv"), "--workdir", str(workdir),
                     "--submissions", str(workdir / "subs"), *TINY, *options])
    printed = capsys.readouterr() if capsys else None
    return code, (printed.out + printed.err) if printed else "", workdir


def _files(workdir):
    """Every probability file and the submission, by path inside the run folder: their bytes."""
    paths = sorted(p for p in workdir.rglob("*.npz") if p.relative_to(workdir).parts[0].startswith("round"))
    files = {str(p.relative_to(workdir)): p.read_bytes() for p in paths}
    files["out.csv"] = (workdir / "out.csv").read_bytes()
    return files


def _assert_same_files(reference, other):
    mine, theirs = _files(reference), _files(other)
    assert len(mine) == 2 * 2 * 2 * 2 + 1, sorted(mine)  # 2 rounds x 2 backbones x 2 folds x (oof, test) + csv
    assert mine.keys() == theirs.keys()
    different = [name for name in mine if mine[name] != theirs[name]]
    assert not different, different


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The sequential loop's run, one thread per unit: what every Ray run here must write."""
    tmp = tmp_path_factory.mktemp("sequential")
    assert _run(tmp, "one_thread", "--unit-threads", "1")[0] == 0
    return tmp / "one_thread"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(address, the folder the worker node cannot see, the worker node's id, the worker node's process)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("the two-node test needs root and unshare (a mount namespace for the worker node)")
    tmp = tmp_path_factory.mktemp("cluster")
    hidden = tmp / "hidden"
    hidden.mkdir()
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = subprocess.Popen([RAY_BIN, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                             *NODE_OPTIONS], env={**os.environ, **RAY_ENV}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    worker = None
    try:
        _wait_for_port(port)
        worker = _start_node(address, hide=hidden, tag="hidden_view")
        [worker_id] = [n["NodeID"] for n in _wait_for_nodes(address, 2) if "hidden_view" in n["Resources"]]
        yield address, hidden, worker_id, worker
    finally:
        _kill_nodes(worker, head)


RAY_BIN = Path(sys.executable).with_name("ray")


def _wait_for_port(port, timeout=60):
    """Once the head's GCS listens (a few seconds), nodes can join: a connection tried every 0.2 s (`ray status`
    would start a Python process each time, beside the head's own start-up on the suite's one core)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, f"the Ray head listens on no port {port} after {timeout} s"
        time.sleep(0.2)


def _start_node(address, hide=None, tag="node"):
    """A node joining the cluster at `address` (one CPU), as a process group of its own; `hide`: a folder
    that this node sees as an empty tmpfs (in a mount namespace of its own), as on a node without the
    shared storage."""
    start = f"{RAY_BIN} start --address {address} --resources '{{\"{tag}\": 1}}' {' '.join(NODE_OPTIONS)}"
    command = ["sh", "-c", f"exec {start}"]
    if hide is not None:
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f"mount -t tmpfs none {hide} && exec {start}"]
    return subprocess.Popen(command, env={**os.environ, **RAY_ENV}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for_nodes(address, count, timeout=90):
    """The cluster's alive nodes, once there are `count` (after a start, or a kill that Ray must notice)."""
    import ray
    ray.init(address=address)
    try:
        for _ in range(timeout):
            nodes = [n for n in ray.nodes() if n["Alive"]]
            if len(nodes) == count:
                return nodes
            time.sleep(1)
        raise AssertionError(f"the cluster has {len(nodes)} alive nodes, not {count}")
    finally:
        ray.shutdown()


def _kill_nodes(*processes):
    """SIGKILL every process of each node: its `ray start` process group, and the Ray worker processes that
    its raylet started (each in a session of its own: left alive, a unit's worker goes on training for a
    while after its node has died)."""
    for process in processes:
        if process is None:
            continue
        workers = [pid for pid in _pids() if _parent_group(pid) == process.pid]
        with contextlib.suppress(ProcessLookupError):  # the node-death test killed the worker node
            os.killpg(process.pid, signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=60)


def _pids():
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


@pytest.mark.slow
def test_a_two_node_cluster_trains_units_on_both_nodes(reference, cluster, tmp_path, capsys):
    address = cluster[0]
    capsys.readouterr()
    code, printed, workdir = _run(tmp_path, "ray", "--executor", "ray", "--ray-address", address,
                                  "--unit-threads", "1", capsys=capsys)
    assert code == 0, printed[-3000:]
    assert f"Ray tasks on 2 node(s) of {address}, 1 thread each" in printed
    nodes = dict(NODE.findall(printed))
    assert len(nodes) == 8 and len(set(nodes.values())) == 2, nodes
    _assert_same_files(reference, workdir)


@pytest.mark.slow
def test_a_run_folder_a_node_cannot_see_is_refused_naming_that_node(cluster, capsys):
    address, hidden, worker_id = cluster[:3]
    capsys.readouterr()
    code = cli.main([str(DEMO_TRAIN), str(DEMO_TEST), str(hidden / "out.csv"), "--workdir", str(hidden / "run"),
                          *TINY, "--executor", "ray", "--ray-address", address, "--unit-threads", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(rf"error: node [\d.]+ {worker_id[:8]}: the run folder {hidden / 'run'} is not shared with it: "
                     rf"No such file or directory \({hidden / 'run' / '.probe-driver'}\)\. Put --workdir on storage "
                     rf"that every node mounts at the same path", err), err[-2000:]
    assert not (hidden / "run" / "round0").exists() and not list((hidden / "run").glob(".probe-*"))


@pytest.mark.slow
def test_more_threads_than_a_node_has_is_refused(cluster, tmp_path, capsys):
    address = cluster[0]
    code = cli.main([str(DEMO_TRAIN), str(DEMO_TEST), str(tmp_path / "out.csv"), "--workdir", str(tmp_path),
                          *TINY, "--executor", "ray", "--ray-address", address, "--unit-threads", "2"])
    assert code == 2
    assert "each unit asks for 2 CPU threads but the largest Ray node has 1 CPUs" in capsys.readouterr().err


@pytest.mark.slow
def test_a_local_ray_instance_stopped_by_ctrl_c_resumes_to_what_the_sequential_loop_writes(reference, tmp_path):
    """No address: a local instance over this machine's cores, each unit with one thread as in the sequential
    loop's run. Ctrl-C stops the tasks; the same command finishes the rest; every unit names the node it ran on;
    the files are the sequential loop's, byte for byte."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    command = [sys.executable, "-m", "fer_kaggle", str(SMALL_TRAIN), str(SMALL_TEST), str(workdir / "out.csv"),
               "--workdir", str(workdir), "--submissions", str(workdir / "subs"), *TINY, "--executor", "ray",
               "--unit-threads", "1"]
    env = {**os.environ, **RAY_ENV}
    # SIGINT as a terminal's Ctrl-C sends it, even where the tests run with it ignored (a background job of
    # a non-interactive shell: Python then installs no KeyboardInterrupt handler)
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while not list(workdir.glob("round0/*/fold*/metrics.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    output = run.communicate(timeout=60)[0]
    assert run.returncode == 130, output[-3000:]
    assert "interrupted: run the same command again to resume where it stopped" in output
    assert "Ray tasks on 1 node(s) of a local instance" in output
    finished = len(list(workdir.glob("round*/*/fold*/metrics.json")))
    assert 1 <= finished < 8, output[-3000:]
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = re.search(r"round0: ([1-4]) of 4 units already finished", again.stdout)
    assert resumed, again.stdout[:3000]
    assert len(NODE.findall(again.stdout)) == 8 - int(resumed.group(1)), again.stdout[-3000:]
    _assert_same_files(reference, workdir)


def _parent_group(pid):
    """The process group of a process's parent (None once either has gone): a Ray worker process sits in a
    session of its own, and its parent is the raylet of its node, which is in the process group of that node's
    `ray start`."""
    try:
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        return os.getpgid(parent)
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_nodes_joining_during_a_run_get_units_once_they_pass_the_shared_folder_check(cluster, tmp_path):
    """A third node joins while the run's first units train: it is checked, announced and trains a unit. Then a
    fourth joins that cannot see the run folder: the run stops, naming it, since Ray would give it units.

    Each unit is paused (SIGSTOP) once it has trained an epoch: on the one core the suite gives this file, the
    units' training would starve the joining nodes' start-up for a minute. Paused, they are units still running,
    as slow ones are."""
    address = cluster[0]
    workdir = tmp_path / "run"
    workdir.mkdir()
    command = [sys.executable, "-m", "fer_kaggle", str(SMALL_TRAIN), str(SMALL_TEST), str(workdir / "out.csv"),
               "--workdir", str(workdir), "--submissions", str(workdir / "subs"), *TINY, "--no-pseudo",
               "--backbones", "fer_vgg_tiny", "--folds", "8", "--epochs", "30", "--executor", "ray",
               "--ray-address", address, "--unit-threads", "1"]  # 8 units that outlast both joins, 2 at a time
    env = {**os.environ, **RAY_ENV, "RAY_DEDUP_LOGS": "0"}
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, paused, joining, hiding, trained_there = [], set(), None, None, False

    def pause(pid):
        paused.add(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)

    try:
        for line in run.stdout:  # forwarded by Ray: "(_ray_unit pid=N) round0/.../fold1 epoch 3/30: ..."
            output.append(line)
            epoch = re.search(r"pid=(\d+).*? epoch \d+/30", line)
            if not epoch:
                continue
            pid = int(epoch.group(1))
            if joining is None:  # a unit on one of the cluster's two nodes
                if pid not in paused:
                    pause(pid)
                if len(paused) == 2:
                    joining = _start_node(address, tag="joined_late")
            elif hiding is None:
                trained_there = _parent_group(pid) == joining.pid
                if trained_there:  # paused too; now one that cannot see the run folder (an empty tmpfs over tmp_path)
                    pause(pid)
                    hiding = _start_node(address, hide=tmp_path, tag="hiding")
        code = run.wait(timeout=300)
    finally:
        run.kill()
        for pid in paused:  # the stopped run's units, if Ray has not ended them yet
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _kill_nodes(joining, hiding)
        _wait_for_nodes(address, 2)  # the next tests' runs check every alive node
    printed = "".join(output)
    joined = re.findall(r"^Ray: node [\d.]+ ([0-9a-f]{8}) joined the cluster: 1 more unit\(s\) at a time$",
                        printed, re.M)
    assert len(joined) == 1, printed[-3000:]
    [joined] = joined
    assert trained_there, printed[-3000:]
    assert code == 2, printed[-3000:]
    refused = re.search(rf"^error: node [\d.]+ ([0-9a-f]{{8}}): the run folder {workdir} is not shared with it: No such "
                        rf"file or directory .*\(that node joined the Ray cluster during the run; the running units "
                        rf"were stopped and keep their last epoch", printed, re.M)
    assert refused and refused.group(1) != joined, printed[-3000:]


@pytest.mark.slow
def test_a_node_dying_mid_unit_has_its_unit_finished_on_the_other_node(cluster, tmp_path):
    """Kill the worker node (all its processes) once one of its units has saved a checkpoint: Ray runs the
    task again on the head node, where the unit resumes from its checkpoint. Kills the cluster's worker: last."""
    address, _, worker_id, worker = cluster[:4]
    workdir = tmp_path / "run"
    workdir.mkdir()
    command = [sys.executable, "-m", "fer_kaggle", str(SMALL_TRAIN), str(SMALL_TEST), str(workdir / "out.csv"),
               "--workdir", str(workdir), "--submissions", str(workdir / "subs"), *TINY, "--no-pseudo",
               "--backbones", "fer_resnet_tiny", "--epochs", "4", "--executor", "ray", "--ray-address", address,
               "--unit-threads", "1"]
    env = {**os.environ, **RAY_ENV, "RAY_DEDUP_LOGS": "0"}  # every forwarded epoch line, as it comes
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, killed, killed_pid = [], None, None
    for line in run.stdout:  # forwarded by Ray: "(_ray_unit pid=N) round0/.../fold1 epoch 3/4: ..."
        output.append(line)
        forwarded = re.search(r"pid=(\d+).*?(round0/\S+/fold\d) epoch (\d+)/4", line)
        if killed is None and forwarded and int(forwarded.group(3)) < 3:
            if _parent_group(int(forwarded.group(1))) == worker.pid:  # a unit on the worker node
                killed, killed_pid = forwarded.group(2), forwarded.group(1)
                _kill_nodes(worker)
    printed = "".join(output)
    assert run.wait(timeout=300) == 0, printed[-3000:]
    assert killed, "no unit was seen running on the worker node: " + printed[-3000:]
    nodes = dict(NODE.findall(printed))
    assert len(nodes) == 2 and nodes[killed] != worker_id[:8], (killed, nodes)
    history = pd.read_csv(workdir / killed / "history.csv")
    assert history["epoch"].tolist() == list(range(1, 5))  # no epoch twice, none missing
    # Which process trained which epoch (Ray may forward a dead node's lines twice): the retry on the head
    # node trained the last epochs and not the first: it resumed from the checkpoint, not from scratch
    trained_by = {(epoch, pid) for pid, name, epoch in re.findall(r"pid=(\d+).*?(round0/\S+/fold\d) epoch (\d+)/4",
                                                                 printed) if name == killed}
    assert {pid for epoch, pid in trained_by if epoch == "1"} == {killed_pid}, trained_by
    assert {pid for epoch, pid in trained_by if epoch == "4"} - {killed_pid}, trained_by


def test_without_ray_the_error_says_how_to_add_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = cli.main([str(DEMO_TRAIN), str(DEMO_TEST), str(tmp_path / "out.csv"), "--workdir", str(tmp_path),
                          *TINY, "--executor", "ray"])
    assert code == 2
    assert "--executor ray needs Ray, an optional extra: pip install 'fer_kaggle[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "round0").exists()


@pytest.mark.parametrize("by", ["--ray-address", "RAY_ADDRESS", "ray://"])
def test_an_address_where_nothing_listens_is_refused_at_once(by, tmp_path, capsys, monkeypatch):
    port = _free_port()  # free: nothing listens there
    given = f"ray://127.0.0.1:{port}" if by == "ray://" else f"127.0.0.1:{port}"
    address = ["--ray-address", given] if by != "RAY_ADDRESS" else []
    monkeypatch.setenv("RAY_ADDRESS", given if by == "RAY_ADDRESS" else "127.0.0.1:1")
    started = time.monotonic()
    code = cli.main([str(DEMO_TRAIN), str(DEMO_TEST), str(tmp_path / "out.csv"), "--workdir", str(tmp_path),
                          *TINY, "--executor", "ray", *address])
    assert code == 2 and time.monotonic() - started < 10
    head = "--ray-client-server-port" if by == "ray://" else "--port"
    assert (f"--ray-address {given}: nothing answers there (Connection refused); start the cluster's head first "
            f"(ray start --head {head} {port})") in capsys.readouterr().err


def test_a_ray_client_address_without_ray_client_installed_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "grpc", None)  # Ray without its [client] extra
    with socket.socket() as listening:  # something answers at the address
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        code = cli.main([str(DEMO_TRAIN), str(DEMO_TEST), str(tmp_path / "out.csv"), "--workdir", str(tmp_path),
                              *TINY, "--executor", "ray", "--ray-address", f"ray://127.0.0.1:{port}"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"error: cannot join the Ray cluster at ray://127.0.0.1:{port}: " in err and "ray[client]" in err
    assert not (tmp_path / "round0").exists()
