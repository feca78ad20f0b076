"""Executors: the ways a batch runs its cases, behind one interface (:class:`Executor`).

Every executor runs :func:`~medseg.batch.worker.execute_case` on each case it is given and calls
``on_record`` once per finished case, in the calling (batch) process:

- :class:`InlineExecutor` (``workers=0``): everything in this process (debugging).
- :class:`ProcessExecutor` (default): a spawn-context ``ProcessPoolExecutor`` whose initializer
  builds ONE :class:`~medseg.inference.pipeline.Segmenter` per process; torch threads per worker =
  cores / workers; on CUDA machines one worker per GPU (each pinned with ``CUDA_VISIBLE_DEVICES``).
  A worker that dies (out of memory, segfault) breaks the pool: the pool is rebuilt, the cases it
  was running are retried once and then recorded as failed.
- :class:`DaskExecutor`: ``scheduler="tcp://host:8786"`` connects to a running cluster,
  ``scheduler="local"`` starts a ``LocalCluster``, and a pipeline's ``execution.cluster`` can start a
  dask-jobqueue cluster (SLURM, PBS...). Workers keep one Segmenter per process in a module-level
  cache. Inputs and OUT must be on a filesystem that the workers share. Dask is imported lazily
  (``medseg[cluster]``).

:func:`make_executor` picks one from ``workers``, ``scheduler`` and ``cluster``.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from medseg.batch.discover import Case
from medseg.batch.state import BatchState
from medseg.batch.worker import CaseFunction, execute_case, init_pool_worker, redact, worker_died

log = logging.getLogger("medseg.batch")

#: Called in the batch process with the record of each finished case (done, no_lung or failed).
RecordCallback = Callable[[dict[str, Any]], None]


class Executor(abc.ABC):
    """Runs a batch's to-do cases; one ``on_record`` call per case, whatever happens to it."""

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """Where the cases run, for the log ("2 local worker process(es)")."""

    @abc.abstractmethod
    def run(self, cases: list[Case], out_dir: str, settings: dict[str, Any], case_fn: CaseFunction | None,
            on_record: RecordCallback) -> None:
        """Run every case of ``cases`` into ``out_dir`` with ``settings`` (``case_fn``: None = the Segmenter)."""


def make_executor(workers: int, scheduler: str | None = None, cluster: dict[str, Any] | None = None) -> Executor:
    """The executor for these execution settings (a Dask one checks now that Dask is installed)."""
    if scheduler is not None or cluster is not None:
        return DaskExecutor(max(workers, 1), scheduler, cluster)
    if workers == 0:
        return InlineExecutor()
    return ProcessExecutor(workers)


class InlineExecutor(Executor):
    """Every case in this process, one after the other."""

    description = "this process"

    def run(self, cases: list[Case], out_dir: str, settings: dict[str, Any], case_fn: CaseFunction | None,
            on_record: RecordCallback) -> None:
        """Run the cases one by one here."""
        for case in cases:
            on_record(execute_case(case, out_dir, settings, case_fn))


class ProcessExecutor(Executor):
    """Local worker processes; a pool broken by a dead worker is rebuilt and its cases retried once."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    @property
    def description(self) -> str:
        return f"{self.workers} local worker process(es)"

    def run(self, cases: list[Case], out_dir: str, settings: dict[str, Any], case_fn: CaseFunction | None,
            on_record: RecordCallback) -> None:
        """Run the cases on pools of worker processes until each has a record."""
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        gpus = cuda_devices(settings)
        if gpus and str(settings.get("device")).startswith("cuda:"):
            # each worker sees only its GPU (CUDA_VISIBLE_DEVICES), where cuda:N is device 0
            settings = {**settings, "device": "cuda"}
        threads = max(1, cores() // self.workers)
        pending = deque(cases)
        deaths: dict[str, int] = {}
        while pending:
            gpu_queue = None
            if gpus:
                gpu_queue = ctx.Queue()
                for i in range(self.workers):
                    gpu_queue.put(gpus[i % len(gpus)])
            self._run_pool(ctx, (settings, threads, gpu_queue, case_fn is None), pending, deaths, out_dir,
                           settings, case_fn, on_record)

    def _run_pool(self, ctx: Any, initargs: tuple, pending: deque, deaths: dict[str, int], out_dir: str,
                  settings: dict[str, Any], case_fn: CaseFunction | None, on_record: RecordCallback) -> None:
        """Run cases from ``pending`` on one pool until they are all done or the pool breaks."""
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=init_pool_worker,
                                   initargs=initargs)
        inflight: dict[Any, Case] = {}
        broken = False
        try:
            while (pending or inflight) and not broken:
                # At most one case per worker in flight: if the pool breaks, these are the suspects.
                while pending and len(inflight) < self.workers:
                    case = pending.popleft()
                    inflight[pool.submit(execute_case, case, out_dir, settings, case_fn)] = case
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    case = inflight.pop(fut)
                    try:
                        on_record(fut.result())
                    except BrokenProcessPool:
                        broken = True
                        _requeue_or_fail(case, deaths, pending, out_dir, on_record)
            if broken:
                for case in inflight.values():
                    _requeue_or_fail(case, deaths, pending, out_dir, on_record)
        finally:
            pool.shutdown(wait=not broken, cancel_futures=True)


def _requeue_or_fail(case: Case, deaths: dict[str, int], pending: deque, out_dir: str,
                     on_record: RecordCallback) -> None:
    """A case whose worker died: back to the front of the queue the first time, failed the second."""
    deaths[case.case_id] = deaths.get(case.case_id, 0) + 1
    if deaths[case.case_id] >= 2:
        on_record(worker_died(case, out_dir))
    else:
        log.warning("a worker process died; retrying case %s", case.case_id)
        pending.appendleft(case)


class DaskExecutor(Executor):
    """Dask: a scheduler address, a LocalCluster (``scheduler="local"``) or a dask-jobqueue cluster."""

    def __init__(self, workers: int, scheduler: str | None = None, cluster: dict[str, Any] | None = None) -> None:
        _distributed()  # now, before anything is written: a clear error when the cluster extra is missing
        self.workers, self.scheduler, self.cluster = workers, scheduler, cluster

    @property
    def description(self) -> str:
        if self.cluster is not None:
            return f"a Dask {self.cluster['type']} cluster"
        if self.scheduler == "local":
            return f"a local Dask cluster of {self.workers} worker(s)"
        return "the Dask scheduler at the given address"

    def run(self, cases: list[Case], out_dir: str, settings: dict[str, Any], case_fn: CaseFunction | None,
            on_record: RecordCallback) -> None:
        """Submit the cases a few per worker thread at a time; a task that never returns fails its case."""
        local = self.scheduler in (None, "local")
        settings = {**settings, "threads": max(1, cores() // self.workers) if local else None}
        client, started = _dask_client(self.scheduler, self.cluster, self.workers)
        as_completed = _distributed().as_completed
        try:
            # Keep every worker thread busy with a little queue, without flooding the scheduler.
            n_slots = max(self.workers, sum(client.nthreads().values()))
            pending = deque(cases)
            by_key: dict[str, Case] = {}

            def submit() -> Any:
                case = pending.popleft()
                token = hashlib.sha1(f"{case.case_id}{time.time_ns()}".encode()).hexdigest()[:8]
                fut = client.submit(execute_case, case, out_dir, settings, case_fn, pure=False,
                                    key=f"medseg-case-{token}")
                by_key[fut.key] = case
                return fut

            queue = as_completed([submit() for _ in range(min(len(pending), 2 * n_slots))])
            for fut in queue:
                on_record(_dask_record(fut, by_key.pop(fut.key), out_dir))
                if pending:
                    queue.add(submit())
        finally:
            client.close()
            if started is not None:
                started.close()


def _dask_record(fut: Any, case: Case, out_dir: str) -> dict[str, Any]:
    """The record a finished Dask task returned, or a failed one when the task never returned."""
    try:
        return fut.result()
    except Exception as exc:  # KilledWorker and friends: the task never returned
        record = worker_died(case, out_dir)
        record["error"] = f"Dask task failed ({exc.__class__.__name__}): {redact(str(exc), case)}"[:500]
        BatchState(out_dir).record(record)
        return record


def _distributed() -> Any:
    """The ``distributed`` module, or a clear error naming the extra that installs it."""
    try:
        import distributed
    except ImportError as exc:
        from medseg.errors import MissingExtraError

        raise MissingExtraError("a Dask scheduler or cluster", "cluster", why="dask and distributed") from exc
    return distributed


def _dask_client(scheduler: str | None, cluster: dict[str, Any] | None, workers: int) -> tuple[Any, Any]:
    """(client, cluster we started or None)."""
    distributed = _distributed()
    if not log.isEnabledFor(logging.DEBUG):  # their INFO chatter would drown the case log (--debug shows it)
        for name in ("distributed", "dask_jobqueue"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if scheduler and scheduler != "local":
        return distributed.Client(scheduler), None
    spec = dict(cluster or {"type": "local"})
    kind = spec.pop("type")
    if kind == "local":
        spec.setdefault("n_workers", workers)
        spec.setdefault("threads_per_worker", 1)
        spec.setdefault("processes", True)
        spec.setdefault("dashboard_address", ":0")  # any free port: never clash with a running cluster
        started = distributed.LocalCluster(**spec)
    else:
        started = _jobqueue_cluster(kind, spec)
    return distributed.Client(started), started


_JOBQUEUE_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster",
                     "htcondor": "HTCondorCluster", "moab": "MoabCluster", "oar": "OARCluster"}


def _jobqueue_cluster(kind: str, spec: dict[str, Any]) -> Any:
    """A started dask-jobqueue cluster of ``kind`` (``spec``: its keyword arguments plus ``jobs``)."""
    try:
        import dask_jobqueue
    except ImportError as exc:
        from medseg.errors import MissingExtraError

        raise MissingExtraError(f"a {kind} cluster", "cluster", why="dask-jobqueue") from exc
    jobs = int(spec.pop("jobs", 1))
    started = getattr(dask_jobqueue, _JOBQUEUE_CLASSES[kind])(**spec)
    started.scale(jobs=jobs)
    return started


# -- the machine -----------------------------------------------------------------------------------
def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


def cuda_devices(settings: dict[str, Any]) -> list[int]:
    """GPU indices to spread workers over (empty on CPU runs); checked without initialising CUDA."""
    device = str(settings.get("device") or "auto")
    if device == "cpu" or not device.startswith(("auto", "cuda")):
        return []
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # pragma: no cover
        return []
    if ":" in device:
        return [int(device.split(":", 1)[1])]
    return list(range(n))
