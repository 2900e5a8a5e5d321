"""Where ``extract`` and ``match`` run their chunks of work: in this process, or on a Ray cluster.

Both stages cut their work into chunks (a few images; a few matcher batches of pairs) and hand
them to ``executor.map`` (``with start(options) as executor``) with a *worker spec*: a small
picklable object whose ``build()`` makes the worker (the model, loaded once), which turns
``(chunk, inputs)`` into a result.
The stage's driver writes every result into its resumable HDF5 file as it arrives, so what ends
up on disk does not depend on the executor:

* ``local``: one worker in this process, the chunks in order. The reference path.
* ``ray``: one long-lived Ray actor per worker slot (``num_cpus`` each, and one GPU each when the
  cluster has GPUs); each actor builds its worker once and serves many chunks, two in flight per
  actor. Per-chunk inputs (``match``: the features of the chunk's images) are put in Ray's object
  store once per key and fetched by the actor, so only the images need shared storage.
  Each actor sets torch's threads to its ``num_cpus``: CPU results depend on the thread count, so
  bit-equal files need as many CPUs per actor as the local run has threads.

Fault tolerance: an actor whose process dies is restarted by Ray (``max_restarts``) and its
unfinished calls are retried (``max_task_retries``); a chunk whose actor is lost for good is
re-submitted to another actor (``max_resubmits`` times). A chunk's results reach the output file
only once the whole chunk is back, so a death mid-chunk loses nothing and duplicates nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .devices import default_device

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
RAY_INSTALL_HINT = "pip install 'omniglue-sfm[ray]' (or: pip install 'ray[default]')"
RAY_CONNECT_TIMEOUT_S = 5.0  # --ray-address: how long a cluster may take to accept a connection
IN_FLIGHT_PER_ACTOR = 2  # one chunk running, one queued: the actor never waits for the driver


def chunked(items: Sequence, size: int) -> list[list]:
    """``items`` in consecutive runs of ``size`` (the last may be shorter): the work units."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


@dataclass(frozen=True)
class ExecutorOptions:
    """How chunks run. Nothing here changes results (so it is not part of any file's configuration)."""

    kind: str = "local"  # one of EXECUTORS
    address: str | None = None  # Ray: cluster address (host:port or "auto"); None: start a local instance
    num_workers: int | None = None  # Ray actors; None: as many as the cluster's CPUs (or GPUs) allow
    cpus_per_worker: int = 1  # Ray: num_cpus of each actor (its torch threads)
    gpus_per_worker: float | None = None  # Ray: None = 1 when the cluster has GPUs, else 0
    max_restarts: int = 3  # Ray: restarts of a dead actor process
    max_resubmits: int = 3  # Ray: re-submissions of a chunk whose actor is gone for good

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ValueError(f"unknown executor {self.kind!r}; choose one of {', '.join(EXECUTORS)}")
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"--ray-workers must be at least 1, got {self.num_workers}")
        if self.cpus_per_worker < 1:
            raise ValueError(f"--ray-cpus-per-worker must be at least 1, got {self.cpus_per_worker}")
        if self.kind == "local" and self.address is not None:
            raise ValueError("--ray-address needs --executor ray")

    @property
    def is_ray(self) -> bool:
        return self.kind == "ray"

    def check(self) -> None:
        """Before any work: a given ``HOST:PORT`` must answer (Ray itself would retry for minutes,
        after extraction has run). ``auto`` and a local instance are Ray's to find."""
        if not self.is_ray or self.address in (None, "auto", "local"):
            return
        host, sep, port = self.address.split("://", 1)[-1].rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"--ray-address {self.address!r}: expected HOST:PORT (e.g. 10.0.0.1:6379) "
                             "or auto")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
        except OSError as err:
            raise ValueError(f"--ray-address {self.address}: nothing answers there ({err}); start the "
                             "cluster first (ray start --head) or fix the address") from None


class Worker(Protocol):
    def __call__(self, chunk: Any, inputs: Mapping[Hashable, Any]) -> Any: ...


class WorkerSpec(Protocol):
    """Picklable recipe of a worker: ``build(remote)`` loads the model (once per worker)."""

    def build(self, remote: bool) -> Worker: ...


InputsOf = Callable[[Any], Mapping[Hashable, Any]]


def no_inputs(chunk: Any) -> Mapping[Hashable, Any]:
    return {}


class LocalExecutor:
    """Chunks run in this process, in order: the reference path."""

    is_ray = False

    def worker_device(self, device: str | None) -> torch.device:
        return default_device(device)

    def map(self, spec: WorkerSpec, chunks: Sequence[Any],
            inputs_of: InputsOf = no_inputs) -> Iterator[tuple[Any, Any]]:
        """(chunk, result) for every chunk, in order."""
        if not chunks:
            return
        worker = spec.build(remote=False)
        for chunk in chunks:
            yield chunk, worker(chunk, inputs_of(chunk))


@contextmanager
def start(options: ExecutorOptions | None) -> Iterator[LocalExecutor | RayExecutor]:
    """The executor of ``options`` (a Ray connection is opened here and closed afterwards)."""
    options = options or ExecutorOptions()
    if not options.is_ray:
        yield LocalExecutor()
        return
    session = _connect(options)
    try:
        yield RayExecutor(session.ray, options)
    finally:
        session.close()


def here() -> str:
    """``host:pid`` of this process (named in errors raised on a Ray worker)."""
    return f"{socket.gethostname()}:{os.getpid()}"


# --------------------------------------------------------------------------------------------
# Ray


def import_ray() -> Any:
    """The ``ray`` module, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError(f"--executor ray needs Ray, which is not installed; install it with "
                         f"{RAY_INSTALL_HINT}") from None
    return ray


class _ChunkActor:
    """A Ray actor: builds the worker once (model loaded, torch threads = its CPUs), serves chunks."""

    def __init__(self, spec: WorkerSpec, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.worker = spec.build(remote=True)

    def run(self, chunk: Any, keys: list[Hashable], refs: list[Any]) -> Any:
        import ray

        values = ray.get(refs) if refs else []
        return self.worker(chunk, dict(zip(keys, values, strict=True)))


@dataclass
class _Session:
    """A Ray connection: started here (shut down afterwards) or joined (left as it was)."""

    ray: Any
    started: bool

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def _connect(options: ExecutorOptions) -> _Session:
    ray = import_ray()
    if ray.is_initialized():  # a caller (a test, a notebook) connected already
        return _Session(ray, started=False)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                              "configure_logging": False}
    # no address: a new local instance ("local"), never a cluster this machine happened to join last
    kwargs["address"] = options.address or "local"
    try:
        ray.init(**kwargs)
    except ConnectionError as err:
        raise ConnectionError(f"cannot reach the Ray cluster at {options.address!r}: {err}; start it "
                              "(`ray start --head`) or check --ray-address") from None
    return _Session(ray, started=True)


class RayExecutor:
    """Chunks run on long-lived Ray actors (one per worker slot), results in completion order."""

    is_ray = True

    def __init__(self, ray: Any, options: ExecutorOptions) -> None:
        self.ray, self.options = ray, options
        resources = ray.cluster_resources()
        self.gpus = options.gpus_per_worker
        if self.gpus is None:
            self.gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        if options.num_workers is not None:
            self.num_workers = options.num_workers
        elif self.gpus > 0:
            self.num_workers = max(1, int(resources.get("GPU", 0) // self.gpus))
        else:
            self.num_workers = max(1, int(resources.get("CPU", 1) // options.cpus_per_worker))

    def worker_device(self, device: str | None) -> torch.device:
        """The device the actors will use (Ray gives each its GPU as cuda:0)."""
        if device:
            return torch.device(device)
        return torch.device("cuda" if self.gpus > 0 else "cpu")

    def map(self, spec: WorkerSpec, chunks: Sequence[Any],
            inputs_of: InputsOf = no_inputs) -> Iterator[tuple[Any, Any]]:
        """(chunk, result) for every chunk, as they complete."""
        if not chunks:
            return
        o = self.options
        n = min(self.num_workers, len(chunks))
        actor_cls = self.ray.remote(num_cpus=o.cpus_per_worker, num_gpus=self.gpus,
                                    max_restarts=o.max_restarts, max_task_retries=o.max_restarts)(_ChunkActor)
        actors = [actor_cls.remote(spec, o.cpus_per_worker) for _ in range(n)]
        log.info("ray: %d worker(s), %d CPU(s) and %g GPU(s) each, %d chunk(s)",
                 n, o.cpus_per_worker, self.gpus, len(chunks))
        try:
            yield from _RayScheduler(self.ray, actors, chunks, inputs_of, o.max_resubmits).run()
        finally:
            for actor in actors:  # free their CPUs/GPUs for the next stage
                self.ray.kill(actor)


class _RayScheduler:
    """Keeps IN_FLIGHT_PER_ACTOR chunks on every live actor; re-submits the chunks of lost ones."""

    def __init__(self, ray: Any, actors: list[Any], chunks: Sequence[Any], inputs_of: InputsOf,
                 max_resubmits: int) -> None:
        self.ray = ray
        self.actors = actors
        self.pending: deque[int] = deque(range(len(chunks)))
        self.chunks = chunks
        self.inputs_of = inputs_of
        self.max_resubmits = max_resubmits
        self.resubmits = [0] * len(chunks)
        self.refs: dict[Hashable, Any] = {}  # input key -> object ref, put once
        self.running: dict[Any, tuple[int, int]] = {}  # result ref -> (chunk index, actor index)
        self.load = [0] * len(actors)
        self.alive = [True] * len(actors)

    def _object_refs(self, chunk: Any) -> tuple[list[Hashable], list[Any]]:
        inputs = self.inputs_of(chunk)
        for key, value in inputs.items():
            if key not in self.refs:
                self.refs[key] = self.ray.put(value)
        keys = list(inputs)
        return keys, [self.refs[k] for k in keys]

    def _fill(self) -> None:
        while self.pending:
            free = [i for i in range(len(self.actors))
                    if self.alive[i] and self.load[i] < IN_FLIGHT_PER_ACTOR]
            if not free:
                return
            a = min(free, key=lambda i: self.load[i])
            c = self.pending.popleft()
            keys, refs = self._object_refs(self.chunks[c])
            ref = self.actors[a].run.remote(self.chunks[c], keys, refs)
            self.running[ref] = (c, a)
            self.load[a] += 1

    def run(self) -> Iterator[tuple[Any, Any]]:
        from ray.exceptions import RayActorError, RayTaskError

        self._fill()
        while self.running:
            ready, _ = self.ray.wait(list(self.running), num_returns=1)
            ref = ready[0]
            c, a = self.running.pop(ref)
            self.load[a] -= 1
            try:
                result = self.ray.get(ref)
            except RayTaskError as err:  # the worker code raised: the user's error, not Ray's
                cause = getattr(err, "cause", None)
                raise (cause if isinstance(cause, Exception) else err) from None
            except RayActorError as err:
                self._lost(c, a, err)
                continue
            yield self.chunks[c], result
            self._fill()

    def _lost(self, c: int, a: int, err: Exception) -> None:
        """Actor ``a`` died past its restarts while running chunk ``c``: give ``c`` to another."""
        self.alive[a] = False
        self.resubmits[c] += 1
        if self.resubmits[c] > self.max_resubmits:
            raise RuntimeError(f"a chunk failed on {self.resubmits[c]} Ray workers in a row; last error: "
                               f"{err}") from None
        if not any(self.alive):
            raise RuntimeError(f"every Ray worker died; last error: {err}") from None
        log.warning("ray: a worker was lost (%s); re-submitting its chunk", str(err).splitlines()[0])
        self.pending.appendleft(c)
        self._fill()
