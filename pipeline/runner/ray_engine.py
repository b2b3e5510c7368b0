"""``--engine ray``: the same run spread over a Ray cluster.

The driver (the process you start) plans the run, keeps the records and finalises every window
folder, exactly as the local engine does; Ray runs the work:

* **device actors** (vggt, da3): one per GPU of the cluster (one on a cluster without GPUs),
  each loads the model once and runs the forwards (and VGGT's tracking) of the batches the
  driver sends it, round robin, so several GPUs work at once;
* **CPU tasks**: each window's finishing job (:class:`pipeline.reconstructors.network.SfmJob`;
  colmap with ``--chunk-frames 0``: the window's whole reconstruction) is a Ray task on the
  cluster's CPUs. colmap's sequence chunks stay on the driver's machine (their feature store
  is in its temporary folder; see ``ColmapReconstructor.attach_pool``).
  Ray retries a task whose worker died (``max_retries``); a task writes only into its window's
  staging folder, which the driver renames once, so a retried window is neither lost nor
  written twice.

The driver owns everything: a device actor hands each window's job back as one of its call's
return objects (they stay in the object store of the actor's node) and the driver sends the
task that takes it. Were the actor to send the task itself, the task's result would die with
the actor (Ray's ownership), and a lost node would fail every window of its batches. Owned by
the driver, a lost node costs nothing: an actor is started again elsewhere and its call sent
again (``max_task_retries``), and a job lost with its node's object store is made again by
running that call again (Ray's lineage reconstruction).

Every node must see the input and output folders at the same paths (a shared filesystem) and
have the package installed (``pip install -e .[ray]``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..exec.executor import Pending
from ..infra.files import remove_tree
from ..infra.tempdirs import make_temp, remove_dead_temps
from ..reconstructors import Reconstructor, WindowResult, reconstructor_class

logger = logging.getLogger(__name__)

TASK_RETRIES = 3
"""Times Ray runs a window's task again after its worker died."""
KILL_HOOK = "PIPELINE_TEST_KILL_WORKER_ONCE"
"""Test hook: when this environment variable names a file that does not exist yet, the first
CPU task to see it creates the file and kills its own worker process (as the kernel's OOM
killer would), so tests can check that Ray's retry costs no window."""


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        InputError: Ray is not installed (with the install line).
    """
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install -e '.[ray]' (or pip install "
                         "'ray>=2.9')") from None
    return ray


@dataclass
class RayConnection:
    """This process joined to a Ray cluster (see :func:`connect`)."""

    ray: Any
    """The ``ray`` module."""
    started: bool
    """This call started Ray (a local cluster): :meth:`close` shuts it down."""
    temp_dir: Path | None = None
    """The local cluster's session folder (logs, sockets), removed by :meth:`close`."""
    nodes: dict[str, tuple[str, int]] = field(default_factory=dict)
    """The nodes alive when the run joined: id -> their raylet's address and port."""
    actor_restarts: int = 0
    """Device actors started again during the run (their node lost, their process killed):
    counted by :class:`RayReconstructor`."""

    def lost_nodes(self) -> int:
        """How many of :attr:`nodes` are gone now (pre-empted, crashed): Ray ran their tasks
        again elsewhere and restarted their device actors. A node counts as gone when the
        cluster says so, or when its raylet no longer answers (the cluster notices a crashed
        node only after missing its heartbeats for about 15 s)."""
        alive = alive_nodes(self.ray)
        return sum(1 for node, where in self.nodes.items()
                   if node not in alive or _refusal(*where, timeout=1.0) is not None)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
        if self.temp_dir is not None:
            remove_tree(self.temp_dir)


RAY_TEMP_PREFIX = "wr-ray-"
"""The session folders of local clusters a run starts (``$TMPDIR/wr-ray-<pid>-*``; short:
Ray's socket paths must fit 107 characters)."""


def connect(address: str | None, num_cpus: int | None = None) -> RayConnection:
    """Join the cluster at ``address`` (``auto``: the one ``ray start`` made on this machine),
    or start a local one with ``num_cpus`` CPUs when ``address`` is None, bound to loopback,
    its session folder in ``$TMPDIR`` (removed at the end; those of runs that died are removed
    here). A process that has called ``ray.init`` already (a Ray program using the pipeline as
    a library) keeps its own.

    Raises:
        InputError: Ray is missing, or the cluster cannot be reached.
    """
    ray = import_ray()
    if ray.is_initialized():
        return RayConnection(ray, False, nodes=alive_nodes(ray))
    host = _check_reachable(address) if address is not None else None
    temp = None
    try:
        if address is None:  # a local cluster: on loopback, so nothing leaves the machine
            remove_dead_temps((RAY_TEMP_PREFIX,))
            temp = make_temp(RAY_TEMP_PREFIX)
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, _node_ip_address=LOOPBACK, _temp_dir=str(temp))
        else:  # Ray would rewrite a loopback address to the machine's own IP: keep it
            loopback = host in LOOPBACK_NAMES
            extra = {"_node_ip_address": LOOPBACK} if loopback else {}
            with _loopback_kept(loopback):
                ray.init(address=address, log_to_driver=False, configure_logging=False,
                         **extra)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        if temp is not None:
            remove_tree(temp)
        raise InputError(f"--ray-address {address}: cannot join the Ray cluster ({exc})") \
            from exc
    resources = ray.cluster_resources()
    nodes = alive_nodes(ray)
    logger.info("ray: %s, %d node(s) with %d CPU(s) and %d GPU(s)", address or "a local cluster",
                len(nodes), int(resources.get("CPU", 0)), int(resources.get("GPU", 0)))
    return RayConnection(ray, True, temp, nodes)


def alive_nodes(ray: Any) -> dict[str, tuple[str, int]]:
    """The cluster's nodes that are alive: id -> their raylet's address and port."""
    return {n["NodeID"]: (n["NodeManagerAddress"], int(n["NodeManagerPort"]))
            for n in ray.nodes() if n.get("Alive")}


def _refusal(host: str, port: int, timeout: float) -> OSError | None:
    """Why nothing accepts connections at ``host:port`` within ``timeout`` seconds, or None
    when something does."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return exc
    return None


LOOPBACK = "127.0.0.1"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


@contextlib.contextmanager
def _loopback_kept(loopback: bool) -> Iterator[None]:
    """While ``ray.init`` joins a cluster at a loopback address, keep that address: Ray (2.x)
    replaces a ``127.0.0.1``/``localhost`` bootstrap address by the machine's outward IP
    (``ray._private.services.resolve_ip_for_localhost``; ray-project/ray#59110), where a
    cluster started with ``--node-ip-address 127.0.0.1`` does not listen, and then retries for
    ever. Restored on exit; a Ray without that function is left as it is."""
    services = None
    if loopback:
        from ray._private import services
    original = getattr(services, "resolve_ip_for_localhost", None)
    if original is None:
        yield
        return
    services.resolve_ip_for_localhost = lambda host: host if host in LOOPBACK_NAMES \
        else original(host)
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = original


def _check_reachable(address: str, timeout: float = 5.0) -> str | None:
    """The host of ``address`` (``host:port`` or ``ray://host:port``; ``None`` for ``auto``),
    after checking that something answers there within ``timeout`` seconds (Ray itself retries
    an unreachable address for minutes).

    Raises:
        InputError: the address is malformed, or nothing answers at it.
    """
    if address == "auto":
        return None
    text = address.split("://", 1)[-1]
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--ray-address {address}: expected host:port (or auto)")
    refused = _refusal(host, int(port), timeout)
    if refused is not None:
        raise InputError(f"--ray-address {address}: nothing answers there "
                         f"({refused.strerror or refused}); start the cluster with 'ray start "
                         "--head' and give the address it prints") from refused
    return host


def _run_task(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Body of every CPU task: ``fn(*args, **kwargs)`` (after the kill hook, see
    :data:`KILL_HOOK`)."""
    marker = os.environ.get(KILL_HOOK)
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            os._exit(137)
    return fn(*args, **kwargs)


@dataclass
class HandedTask:
    """A CPU job a device actor hands back to the driver: ``fn(*args, **kwargs)``."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def _finish(item: Any) -> Any:
    """Body of the task that finishes a window a device actor started: its job run here, or
    the actor's own result (a window the forward already failed) passed on."""
    if isinstance(item, HandedTask):
        return _run_task(item.fn, item.args, item.kwargs)
    return item


class HandOverPool:
    """The pool a device actor's reconstructor sends its CPU jobs to: each comes back at once
    as a :class:`HandedTask`, for the driver to send (so that the driver owns it)."""

    inline = False
    local_disk = False

    def __init__(self, workers: int) -> None:
        self.workers = workers
        """CPUs of the cluster."""
        self.generation = 0

    def executor(self) -> HandOverPool:
        return self

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        future.set_result(HandedTask(fn, args, kwargs))
        return future


class RayPool:
    """The :class:`pipeline.exec.executor.CpuPool` interface over Ray tasks (one CPU each)."""

    inline = False
    local_disk = False
    """A task may run on another machine: it sees only the shared folders (input, output)."""

    def __init__(self, ray: Any) -> None:
        self._ray = ray
        self._task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(_run_task)
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        """CPUs of the cluster (the executor keeps two tasks per CPU in flight)."""
        self.generation = 0
        self._refs: list[Any] = []

    def executor(self) -> RayPool:
        """Itself: ``submit`` is what callers of a process pool use."""
        return self

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """``fn(*args, **kwargs)`` as a Ray task; the future carries the task's ``ray_ref``."""
        ref = self._task.remote(fn, args, kwargs)
        self._refs = [r for r in self._refs if not _ready(self._ray, r)] + [ref]
        future = ref.future()
        future.ray_ref = ref
        return future

    def restart(self) -> None:
        self.generation += 1

    def stop(self) -> None:
        """Cancel the tasks still running (their windows are abandoned)."""
        for ref in self._refs:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - finished, or already gone
                pass
        self._refs = []

    def close(self) -> None:
        self._refs = []


def _ready(ray: Any, ref: Any) -> bool:
    return bool(ray.wait([ref], timeout=0)[0])


class DeviceWorker:
    """Body of a device actor: one reconstructor (one model load) and its batches."""

    def __init__(self, config: Any) -> None:
        from ..reconstructors import build_reconstructor

        ray = import_ray()
        self.reconstructor = build_reconstructor(config)
        self.pool = HandOverPool(max(1, int(ray.cluster_resources().get("CPU", 1))))
        self.where = {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def facts(self) -> dict[str, Any]:
        """What the driver records: description, signature, load stage, device, and where the
        actor runs (node id, process id)."""
        r = self.reconstructor
        return {"describe": r.describe(), "signature": r.signature_options(),
                "load_stage": r.load_stage, "device": r.device, **self.where}

    def start_batch(self, windows: list[Any], stagings: list[Path]) -> tuple[Any, ...]:
        """The batch's device part here. Returns ``len(windows) + 1`` objects: per window a
        :class:`HandedTask` (its CPU job) or its :class:`WindowResult`, then the batch's report
        and where the actor ran (``{"report", "node", "pid"}``)."""
        pending = self.reconstructor.start_batch(windows, stagings, self.pool)
        items = [p.future.result() for p in pending]
        return (*items, {"report": self.reconstructor.last_report, **self.where})


ACTOR_RESTARTS = 3
"""Times a device actor is started again after its process (or its node) died."""


class RayReconstructor(Reconstructor):
    """The driver's stand-in for a network reconstructor whose model lives in device actors.

    Batches go to the actors round robin and return at once: each window's result arrives
    when its actor's forward and then its CPU task are done, so several GPUs and all the CPUs
    work at the same time. An actor that dies is started again (the model loaded again) and
    its call sent again, as often as it takes while it is restarting (``max_task_retries=-1``),
    up to :data:`ACTOR_RESTARTS` restarts; the restarts are counted on the connection."""

    def __init__(self, config: Any, connection: RayConnection) -> None:
        cls = reconstructor_class(config.reconstructor)
        self.name = cls.name
        self.device_stages = cls.device_stages
        ray = self._ray = connection.ray
        self._connection = connection
        gpus = int(ray.cluster_resources().get("GPU", 0))
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        actor = ray.remote(max_restarts=ACTOR_RESTARTS, max_task_retries=-1,
                           **resources)(DeviceWorker)
        self.actors = [actor.remote(config) for _ in range(max(1, gpus))]
        facts = ray.get([a.facts.remote() for a in self.actors])
        self._facts = facts[0]
        self._processes = [(f["node"], f["pid"]) for f in facts]
        self._finish = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(_finish)
        self._lock = threading.Lock()
        self.device = f"ray: {len(self.actors)} device actor(s) on {facts[0]['device']}"
        self.load_stage = facts[0]["load_stage"]
        self._next = 0
        self._reports: list[Any] = []
        for i, f in enumerate(facts):
            logger.info("ray: device actor %d loaded %s on node %s", i, config.model, f["node"])

    def describe(self) -> dict[str, Any]:
        return {**self._facts["describe"], "engine": "ray", "device_actors": len(self.actors)}

    def signature_options(self) -> Any:
        return self._facts["signature"]

    def reconstruct_batch(self, windows: Sequence[Any],
                          staging_dirs: Sequence[Path]) -> list[WindowResult]:
        from ..exec.executor import result_of

        return [result_of(p) for p in self.start_batch(windows, staging_dirs, None)]

    def start_batch(self, windows: Sequence[Any], staging_dirs: Sequence[Path],
                    pool: Any) -> list[Pending]:
        """Send the batch to the next actor; each window's task, which takes its job from the
        actor's answer, is sent at once (Ray starts it when that answer is there)."""
        index = self._next % len(self.actors)
        self._next += 1
        refs = self.actors[index].start_batch.options(num_returns=len(windows) + 1).remote(
            list(windows), list(staging_dirs))
        refs[-1].future().add_done_callback(lambda done: self._reported(index, done))
        return [Pending(self._finish.remote(ref).future()) for ref in refs[:-1]]

    def _reported(self, index: int, done: Future) -> None:
        """A batch's report came back: keep it, and count a restart when the actor answered
        from another process than before."""
        try:
            answer = done.result()
        except Exception:  # noqa: BLE001 - the actor is gone; its windows fail with the reason
            return
        where = (answer["node"], answer["pid"])
        with self._lock:
            self._reports.append(answer["report"])
            if where == self._processes[index]:
                return
            self._processes[index] = where
            self._connection.actor_restarts += 1
        logger.warning("ray: device actor %d was started again on node %s (the model loaded "
                       "again); its batches were sent again", index, where[0])

    @property
    def last_report(self) -> Any:
        """The reports of the batches that came back since the last look, as one."""
        from ..reconstructors import BatchReport

        with self._lock:
            reports, self._reports = self._reports, []
        merged = BatchReport()
        for report in reports:
            if report is not None:
                merged.stages += report.stages
        return merged

    @last_report.setter
    def last_report(self, value: Any) -> None:
        pass

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
