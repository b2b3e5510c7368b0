"""``--engine ray``: the same run spread over a Ray cluster.

The driver (the process you start) plans the run, keeps the records and finalises every window
folder, exactly as the local engine does; Ray runs the work:

* **device actors** (vggt, da3): one per GPU of the cluster (one on a cluster without GPUs),
  each loads the model once and runs the forwards (and VGGT's tracking) of the batches the
  driver sends it, round robin, so several GPUs work at once;
* **CPU tasks**: each window's finishing job (:class:`pipeline.reconstructors.network.SfmJob`;
  colmap: its feature store, chunk mapping and windows) is a Ray task, sent by the actor that
  made it straight to the cluster's CPUs. Ray retries a task whose worker died
  (``max_retries``); a task writes only into its window's staging folder, which the driver
  renames once, so a retried window is neither lost nor written twice.

Every node must see the input and output folders at the same paths (a shared filesystem) and
have the package installed (``pip install -e .[ray]``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
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


class RayPool:
    """The :class:`pipeline.exec.executor.CpuPool` interface over Ray tasks (one CPU each)."""

    inline = False

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
        self.pool = RayPool(ray)

    def facts(self) -> dict[str, Any]:
        """What the driver records: description, signature, load stage, device."""
        r = self.reconstructor
        return {"describe": r.describe(), "signature": r.signature_options(),
                "load_stage": r.load_stage, "device": r.device}

    def start_batch(self, windows: list[Any], stagings: list[Path]) -> tuple[list[Any], Any]:
        """The batch's device part here; its CPU jobs go to Ray tasks. Returns per window a
        :class:`WindowResult` or the task's object ref, and the batch's report."""
        pending = self.reconstructor.start_batch(windows, stagings, self.pool)
        items = [getattr(p.future, "ray_ref", None) or p.future.result() for p in pending]
        return items, self.reconstructor.last_report


class RayReconstructor(Reconstructor):
    """The driver's stand-in for a network reconstructor whose model lives in device actors.

    Batches go to the actors round robin and return at once: each window's result arrives
    when its actor's forward and then its CPU task are done, so several GPUs and all the CPUs
    work at the same time."""

    def __init__(self, config: Any, ray: Any) -> None:
        cls = reconstructor_class(config.reconstructor)
        self.name = cls.name
        self.device_stages = cls.device_stages
        self._ray = ray
        gpus = int(ray.cluster_resources().get("GPU", 0))
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        # an actor whose process dies is started again (the model loaded again) and its
        # batch sent again
        actor = ray.remote(max_restarts=2, max_task_retries=2, **resources)(DeviceWorker)
        self.actors = [actor.remote(config) for _ in range(max(1, gpus))]
        facts = ray.get([a.facts.remote() for a in self.actors])
        self._facts = facts[0]
        self.device = f"ray: {len(self.actors)} device actor(s) on {facts[0]['device']}"
        self.load_stage = facts[0]["load_stage"]
        self._next = 0
        self._reports: list[Any] = []
        logger.info("ray: %d device actor(s) loaded %s", len(self.actors), config.model)

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
        actor = self.actors[self._next % len(self.actors)]
        self._next += 1
        outer = actor.start_batch.remote(list(windows), list(staging_dirs)).future()
        futures: list[Future] = [Future() for _ in windows]
        outer.add_done_callback(lambda done: self._chain(done, futures))
        return [Pending(f) for f in futures]

    def _chain(self, done: Future, futures: list[Future]) -> None:
        """The actor answered: hand each window's result (or its task's) to its future."""
        try:
            items, report = done.result()
        except Exception as exc:  # noqa: BLE001 - the batch fails, the run goes on
            for f in futures:
                f.set_result(WindowResult.failure(f"{type(exc).__name__}: {exc}"))
            return
        self._reports.append(report)
        for item, future in zip(items, futures):
            if isinstance(item, WindowResult):
                future.set_result(item)
            else:
                item.future().add_done_callback(lambda d, f=future: _copy(d, f))

    @property
    def last_report(self) -> Any:
        """The reports of the batches that came back since the last look, as one."""
        from ..reconstructors import BatchReport

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


def _copy(source: Future, target: Future) -> None:
    """``source``'s outcome into ``target`` (a cancelled task fails its window)."""
    try:
        target.set_result(source.result())
    except BaseException as exc:  # noqa: BLE001 - the window fails with the reason
        target.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
