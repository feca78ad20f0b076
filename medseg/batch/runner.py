"""``run_batch``: segment every case of a folder or manifest, resumably, in parallel.

Executors:

- local worker processes (default): a spawn-context ``ProcessPoolExecutor`` whose initializer
  builds ONE :class:`~medseg.inference.pipeline.Segmenter` per process; torch threads per worker =
  cores / workers; on CUDA machines one worker per GPU (each pinned with ``CUDA_VISIBLE_DEVICES``).
  A worker that dies (out of memory, segfault) breaks the pool: the pool is rebuilt, the cases it
  was running are retried once and then recorded as failed.
- Dask: ``scheduler="tcp://host:8786"`` connects to a running cluster, ``scheduler="local"`` starts
  a ``LocalCluster``, and a pipeline's ``execution.cluster`` can start a dask-jobqueue cluster
  (SLURM, PBS...). Workers keep one Segmenter per process in a module-level cache. Inputs and
  OUT must be on a filesystem that the workers share.
- ``workers=0``: everything in this process (debugging).

One case never stops the others: any exception becomes a ``failed`` record with its reason.
Outputs, markers and tables follow the protocol in :mod:`medseg.batch.state`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.batch.discover import Case, discover
from medseg.batch.pipeline import check_inference, default_pipeline, dump_pipeline, load_pipeline
from medseg.batch.state import BatchState
from medseg.batch.summary import write_tables
from medseg.errors import InputError
from medseg.io.atomic import write_text_atomic

log = logging.getLogger("medseg.batch")

#: A per-case function: (case, work folder, settings) -> result dict with at least n_nodules,
#: largest_diameter_mm, nodules (list of dicts), warnings (list of str). Must be importable
#: (module-level) so worker processes can unpickle it.
CaseFunction = Callable[[Case, Path, dict[str, Any]], dict[str, Any]]

#: Settings that do not change results (left out of the resume consistency check).
_RUNTIME_ONLY = {"device", "quiet", "threads"}
#: Seconds between rewrites of summary.csv/nodules.csv while a batch runs.
TABLE_INTERVAL_S = 5.0


@dataclass
class BatchSummary:
    """What a batch did. ``records`` holds one dict per case in discovery order."""

    out_dir: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    n_done: int = 0
    n_failed: int = 0
    n_no_lung: int = 0  # CTs with no plausible lung: finished, but no search ran
    n_skipped: int = 0  # finished in an earlier run, not recomputed
    elapsed_s: float = 0.0
    summary_csv: Path | None = None
    nodules_csv: Path | None = None

    @property
    def ok(self) -> bool:
        """True when no case failed."""
        return self.n_failed == 0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "failed"]


# -- per-process Segmenter cache (local workers and Dask workers) -------------------------------
_SEGMENTERS: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()
_THREADS_SET = False


def get_segmenter(settings: dict[str, Any]) -> Any:
    """The process's Segmenter for ``settings`` (built once, then reused for every case)."""
    key = json.dumps(settings, sort_keys=True, default=str)
    with _CACHE_LOCK:
        entry = _SEGMENTERS.get(key)
        if entry is None:
            from medseg.inference.pipeline import InferenceSettings, Segmenter

            kwargs = {k: v for k, v in settings.items() if k not in ("threads",)}
            entry = _SEGMENTERS[key] = (Segmenter(InferenceSettings(**kwargs)), threading.Lock())
    return entry


def segment_case(case: Case, work_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The default per-case function: the cached Segmenter on one scan or DICOM series."""
    segmenter, lock = get_segmenter(settings)
    source = Path(case.input)
    if case.kind == "dicom" and case.shared_folder:
        # Several CT series share this folder and the reader would pick the largest one: give it a
        # folder of links to just this series (the input files themselves are never touched).
        source = work_dir / ".series"
        source.mkdir()
        for i, f in enumerate(case.files):
            os.symlink(os.path.abspath(f), source / f"{i:05d}_{Path(f).name}")
    with lock:  # Dask may run several tasks in one process; the model is used one case at a time
        result = segmenter.run(source, work_dir, case_name=case.case_id)
    if source != Path(case.input):
        import shutil

        shutil.rmtree(source, ignore_errors=True)
    return {
        "status": result.status,
        "n_nodules": result.n_nodules,
        "largest_diameter_mm": result.largest_diameter_mm,
        "nodules": result.nodules,
        "warnings": list(result.warnings),
        "timings": dict(result.timings),
    }


def execute_case(case: Case, out_dir: str, settings: dict[str, Any], case_fn: CaseFunction | None = None) -> dict[str, Any]:
    """Run one case end to end in whatever process calls it; never raises.

    Writes the outputs into a temporary folder, renames it to ``OUT/<case>``, then writes the
    done marker; on any error writes a failed marker. Returns the case record.
    """
    global _THREADS_SET
    state = BatchState(out_dir)
    start = time.perf_counter()
    record: dict[str, Any] = {"case_id": case.case_id, "input": case.input, "fingerprint": case.fingerprint()}
    work = None
    try:
        if case.error:
            raise InputError(case.input, case.error)
        if settings.get("threads") and not _THREADS_SET:
            import torch

            torch.set_num_threads(int(settings["threads"]))
            _THREADS_SET = True
        work = state.new_work_dir(case.case_id)
        result = (case_fn or segment_case)(case, work, settings)
        if _orphaned():  # the batch was killed: a re-run owns OUT now, publish nothing
            os._exit(1)
        final = state.publish(case.case_id, work)
        work = None
        no_lung = result.get("status") == "no_lung"
        record.update(
            status="no_lung" if no_lung else "done",
            n_nodules=None if no_lung else int(result.get("n_nodules") or 0),
            largest_diameter_mm=result.get("largest_diameter_mm"),
            nodules=result.get("nodules") or [],
            warnings=[_redact(w, case) for w in result.get("warnings") or []],
            timings=result.get("timings") or {},
            output_dir=final.name,
            error="",
        )
    except Exception as exc:  # one case never stops the batch: record why and go on
        log.debug("case %s failed:\n%s", case.case_id, _redact(traceback.format_exc(), case))
        record.update(status="failed", n_nodules=None, largest_diameter_mm=None, nodules=[], warnings=[],
                      error=_redact(_reason(exc), case))
    finally:
        if work is not None:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    record["runtime_s"] = round(time.perf_counter() - start, 3)
    if _orphaned():
        os._exit(1)
    try:
        state.record(record)
    except OSError as exc:  # OUT unwritable: the parent still learns the result
        record["error"] = (record.get("error") or "") + f" (marker not written: {exc})"
    return record


def _reason(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return exc.problem
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


_ID_TAGS = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "AccessionNumber")


def _identifiers(case: Case) -> list[str]:
    """Patient identifiers from the series' first header, only so they can be scrubbed from text."""
    if case.kind != "dicom" or not case.files:
        return []
    try:
        import pydicom

        ds = pydicom.dcmread(case.files[0], stop_before_pixels=True, specific_tags=list(_ID_TAGS))
    except Exception:
        return []
    found: list[str] = []
    for tag in _ID_TAGS:
        value = str(ds.get(tag, "") or "").strip()
        if value:
            found.append(value)
            found += [p for p in value.replace("^", " ").replace(",", " ").split() if len(p) >= 2]
    return sorted(set(found), key=len, reverse=True)


def _redact(text: str, case: Case) -> str:
    """Remove patient names/IDs from DICOM headers out of a message (defence in depth)."""
    import re

    for ident in _identifiers(case) if text else []:
        text = re.sub(re.escape(ident), "[redacted]", text, flags=re.IGNORECASE)
    return text


def _worker_died(case: Case, out_dir: str) -> dict[str, Any]:
    record = {"case_id": case.case_id, "input": case.input, "fingerprint": case.fingerprint(), "status": "failed",
              "n_nodules": None, "largest_diameter_mm": None, "nodules": [], "warnings": [], "runtime_s": 0.0,
              "error": "the worker process died while running this case (out of memory or a crash)"}
    BatchState(out_dir).record(record)
    return record


# -- local process pool ------------------------------------------------------------------------
_PARENT_PID: int | None = None


def _orphaned() -> bool:
    """True in a pool worker whose batch process has died (e.g. ``kill -9`` of the batch only)."""
    return _PARENT_PID is not None and os.getppid() != _PARENT_PID


def _init_worker(settings: dict[str, Any], threads: int, gpu_queue: Any, preload: bool) -> None:
    global _THREADS_SET, _PARENT_PID
    _PARENT_PID = os.getppid()
    if gpu_queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_queue.get())
    # Read by torch/OpenMP when they load, so worker processes do not oversubscribe the cores.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(max(1, threads))
    if preload:
        import torch

        torch.set_num_threads(max(1, threads))
        _THREADS_SET = True
        try:
            get_segmenter(settings)
        except Exception:  # reported per case by execute_case, which retries the build
            log.debug("Segmenter build failed in worker", exc_info=True)


def _run_local(cases: list[Case], out_dir: str, settings: dict[str, Any], case_fn: CaseFunction | None,
               workers: int, on_record: Callable[[dict[str, Any]], None]) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    gpus = _cuda_devices(settings)
    if gpus and str(settings.get("device")).startswith("cuda:"):
        # each worker sees only its GPU (CUDA_VISIBLE_DEVICES), where cuda:N is device 0
        settings = {**settings, "device": "cuda"}
    threads = max(1, _cores() // workers)
    pending = deque(cases)
    deaths: dict[str, int] = {}
    while pending:
        gpu_queue = None
        if gpus:
            gpu_queue = ctx.Queue()
            for i in range(workers):
                gpu_queue.put(gpus[i % len(gpus)])
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(settings, threads, gpu_queue, case_fn is None))
        inflight: dict[Any, Case] = {}
        broken = False
        try:
            while (pending or inflight) and not broken:
                # At most one case per worker in flight: if the pool breaks, these are the suspects.
                while pending and len(inflight) < workers:
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
                     on_record: Callable[[dict[str, Any]], None]) -> None:
    deaths[case.case_id] = deaths.get(case.case_id, 0) + 1
    if deaths[case.case_id] >= 2:
        on_record(_worker_died(case, out_dir))
    else:
        log.warning("a worker process died; retrying case %s", case.case_id)
        pending.appendleft(case)


# -- Dask --------------------------------------------------------------------------------------
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
    Client, LocalCluster = distributed.Client, distributed.LocalCluster

    if not log.isEnabledFor(logging.DEBUG):  # their INFO chatter would drown the case log (--debug shows it)
        for name in ("distributed", "dask_jobqueue"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if scheduler and scheduler != "local":
        return Client(scheduler), None
    spec = dict(cluster or {"type": "local"})
    kind = spec.pop("type")
    if kind == "local":
        spec.setdefault("n_workers", workers)
        spec.setdefault("threads_per_worker", 1)
        spec.setdefault("processes", True)
        spec.setdefault("dashboard_address", ":0")  # any free port: never clash with a running cluster
        started = LocalCluster(**spec)
    else:
        try:
            import dask_jobqueue
        except ImportError as exc:
            from medseg.errors import MissingExtraError

            raise MissingExtraError(f"a {kind} cluster", "cluster", why="dask-jobqueue") from exc

        jobs = int(spec.pop("jobs", 1))
        classes = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster",
                   "htcondor": "HTCondorCluster", "moab": "MoabCluster", "oar": "OARCluster"}
        started = getattr(dask_jobqueue, classes[kind])(**spec)
        started.scale(jobs=jobs)
    return Client(started), started


def _run_dask(cases: list[Case], out_dir: str, settings: dict[str, Any], case_fn: CaseFunction | None,
              workers: int, scheduler: str | None, cluster: dict[str, Any] | None,
              on_record: Callable[[dict[str, Any]], None]) -> None:
    client, started = _dask_client(scheduler, cluster, workers)
    as_completed = _distributed().as_completed
    try:
        # Keep every worker thread busy with a little queue, without flooding the scheduler.
        n_slots = max(workers, sum(client.nthreads().values()))
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
            case = by_key.pop(fut.key)
            try:
                record = fut.result()
            except Exception as exc:  # KilledWorker and friends: the task never returned
                record = _worker_died(case, out_dir)
                record["error"] = f"Dask task failed ({exc.__class__.__name__}): {_redact(str(exc), case)}"[:500]
                BatchState(out_dir).record(record)
            on_record(record)
            if pending:
                queue.add(submit())
    finally:
        client.close()
        if started is not None:
            started.close()


# -- the API -----------------------------------------------------------------------------------
def run_batch(
    inputs: str | os.PathLike[str] | Iterable[Case] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    pipeline: str | os.PathLike[str] | dict[str, Any] | None = None,
    *,
    quiet: bool = False,
    retry_failed: bool = True,
    case_fn: CaseFunction | None = None,
    **settings: Any,
) -> BatchSummary:
    """Segment every case of ``inputs`` into ``out_dir``; resumable; returns a :class:`BatchSummary`.

    ``inputs``: a folder (searched recursively), a CSV manifest (``path`` [, ``case_id``]), or
    :class:`Case` objects. ``workers``: local worker processes (default 1, or one per GPU; 0 =
    in this process) or Dask workers for ``scheduler="local"``. ``scheduler``: ``None`` (local
    processes), ``"local"`` (a Dask LocalCluster) or a Dask scheduler address. ``pipeline``: a
    pipeline file or dict whose values are defaults for every argument given as ``None``.
    ``settings``: :class:`~medseg.inference.pipeline.InferenceSettings` fields (model, device, tta...).
    ``retry_failed``: redo cases that failed in an earlier run (done cases are never redone unless
    their input changed). ``case_fn``: replaces the Segmenter (testing, other tasks).
    """
    plan = load_pipeline(pipeline)
    inference = dict(plan["inference"])
    inference.update({k: v for k, v in settings.items() if v is not None})
    unknown = sorted(set(inference) - set(plan["inference"]))
    if unknown:
        raise TypeError(f"run_batch() got unknown settings {unknown}")
    check_inference(inference, "settings")
    execution = plan["execution"]
    source = inputs if inputs is not None else plan.get("input")
    out = out_dir if out_dir is not None else plan.get("output")
    if source is None or out is None:
        raise InputError(None, "a batch needs an input (folder or CSV manifest) and an output folder")
    scheduler = scheduler if scheduler is not None else execution.get("scheduler")
    cluster = execution.get("cluster") if scheduler is None else None
    out = Path(out)
    gpus = _cuda_devices(inference)
    if workers is None:
        workers = execution.get("workers")
    if workers is None:
        workers = len(gpus) if gpus else 1
    workers = int(workers)
    if workers < 0:
        raise InputError(None, f"workers must be 0 or more, got {workers}")
    _check_model(inference.get("model"), case_fn)
    if scheduler is not None or cluster is not None:
        _distributed()  # before anything is written: a clear error when the cluster extra is missing
    if inference.get("model"):  # absolute: the recorded pipeline must not depend on the current folder
        inference["model"] = str(Path(inference["model"]).resolve())

    if isinstance(source, (str, os.PathLike)):
        cases = discover(source, exclude=[out])
        source_text = str(Path(source).resolve())
    else:
        cases = list(source)
        source_text = None
    state = BatchState(out)
    start = time.perf_counter()
    with state.lock():
        state.prepare()
        fn_name = f"{case_fn.__module__}.{case_fn.__qualname__}" if case_fn else "medseg.batch.runner.segment_case"
        state.check_settings({**{k: v for k, v in inference.items() if k not in _RUNTIME_ONLY},
                              "model_file": _file_identity(inference.get("model")), "case_fn": fn_name},
                             defaults=default_pipeline()["inference"])
        resolved = {**plan, "input": source_text, "output": str(out.resolve()), "inference": inference,
                    "execution": {"workers": workers, "scheduler": scheduler, "cluster": cluster}}
        write_text_atomic(out / "pipeline.yaml", dump_pipeline(resolved))

        records: dict[str, dict[str, Any]] = {}
        todo: list[Case] = []
        for case in cases:
            previous = state.finished(case) or (None if retry_failed else state.failed(case))
            if previous is not None:
                records[case.case_id] = previous
            else:
                todo.append(case)
        summary = BatchSummary(out, n_skipped=len(records))
        if summary.n_skipped:
            log.info("resuming: %d of %d cases already finished", summary.n_skipped, len(cases))
        log.info("%d case(s) to run with %s", len(todo), _describe(workers, scheduler, cluster))

        order = {c.case_id: i for i, c in enumerate(cases)}
        last_write = [0.0]

        def tables(force: bool = False) -> None:
            if force or time.monotonic() - last_write[0] >= TABLE_INTERVAL_S:
                ordered = sorted(records.values(), key=lambda r: order.get(r["case_id"], len(order)))
                summary.summary_csv, summary.nodules_csv = write_tables(out, ordered)
                last_write[0] = time.monotonic()

        bar = _progress(len(todo), quiet)
        counts = {"done": 0, "no_lung": 0, "failed": 0}

        def on_record(record: dict[str, Any]) -> None:
            records[record["case_id"]] = record
            counts[record["status"]] += 1
            if record["status"] == "done":
                log.info("%s: done, %d nodule(s), %.1f s", record["case_id"], record["n_nodules"], record["runtime_s"])
            elif record["status"] == "no_lung":
                log.warning("%s: no plausible lung in this CT: no nodule search was run", record["case_id"])
            else:
                log.warning("%s: failed: %s", record["case_id"], record["error"])
            bar.set_postfix(done=counts["done"], no_lung=counts["no_lung"], failed=counts["failed"], refresh=False)
            bar.update(1)
            tables()

        run_settings = {**inference, "quiet": True}  # workers never draw their own progress bars
        # Log lines go through tqdm.write while the bar is drawn, so they do not tear it.
        redirect = contextlib.nullcontext() if bar.disable else _logging_redirect()
        try:
            redirect.__enter__()
            if not todo:
                pass  # everything was finished before: just rewrite the tables
            elif scheduler is not None or cluster is not None:
                run_settings["threads"] = max(1, _cores() // max(workers, 1)) if scheduler in (None, "local") else None
                _run_dask(todo, str(out), run_settings, case_fn, max(workers, 1), scheduler, cluster, on_record)
            elif workers == 0:
                for case in todo:
                    on_record(execute_case(case, str(out), run_settings, case_fn))
            else:
                _run_local(todo, str(out), run_settings, case_fn, workers, on_record)
        finally:
            bar.close()
            redirect.__exit__(None, None, None)
            tables(force=True)

    summary.records = sorted(records.values(), key=lambda r: order.get(r["case_id"], len(order)))
    summary.n_done = sum(r["status"] == "done" for r in summary.records)
    summary.n_failed = sum(r["status"] == "failed" for r in summary.records)
    summary.n_no_lung = sum(r["status"] == "no_lung" for r in summary.records)
    summary.elapsed_s = time.perf_counter() - start
    log.info("batch finished: %d done, %d no lung, %d failed, %d resumed, %.1f s", summary.n_done,
             summary.n_no_lung, summary.n_failed, summary.n_skipped, summary.elapsed_s)
    return summary


def _progress(total: int, quiet: bool) -> Any:
    from tqdm.auto import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal
    return tqdm(total=total, unit="scan", desc="batch", disable=True if quiet else None, file=sys.stderr)


def _logging_redirect() -> Any:
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def _describe(workers: int, scheduler: str | None, cluster: dict[str, Any] | None) -> str:
    if cluster is not None:
        return f"a Dask {cluster['type']} cluster"
    if scheduler == "local":
        return f"a local Dask cluster of {workers} worker(s)"
    if scheduler:
        return "the Dask scheduler at the given address"
    return "this process" if workers == 0 else f"{workers} local worker process(es)"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


def _cuda_devices(settings: dict[str, Any]) -> list[int]:
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


def _check_model(model: str | None, case_fn: CaseFunction | None) -> None:
    """Fail the whole batch early (exit 2) for a missing checkpoint instead of failing every case."""
    if case_fn is not None:
        return
    if model is None:
        from medseg.models import BUNDLED_MODEL

        if not BUNDLED_MODEL.is_file():
            raise InputError(BUNDLED_MODEL, "no bundled model is installed; pass --model CHECKPOINT")
    elif not Path(model).is_file():
        raise InputError(model, "model checkpoint not found")


def _file_identity(model: str | None) -> dict[str, Any] | None:
    if model is None:
        from medseg.models import BUNDLED_MODEL

        model = str(BUNDLED_MODEL)
    try:
        st = Path(model).stat()
    except OSError:
        return None
    return {"path": str(Path(model).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
