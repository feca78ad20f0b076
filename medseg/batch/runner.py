"""``run_batch``: segment every case of a folder or manifest, resumably, in parallel.

The one path from scans to masks for many cases: resolve the settings (arguments over the
pipeline's defaults), discover the cases, take the lock on OUT, skip what an earlier run finished
(resume), hand the to-do list to an executor (:mod:`medseg.batch.executors`: this process, local
worker processes, or Dask), and keep ``summary.csv``/``nodules.csv`` up to date as cases finish.

One case never stops the others: any exception becomes a ``failed`` record with its reason
(:func:`~medseg.batch.worker.execute_case`). Outputs, markers and tables follow the protocol in
:mod:`medseg.batch.state`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.batch.discover import Case, discover
from medseg.batch.executors import cuda_devices, make_executor
from medseg.batch.pipeline import check_inference, default_pipeline, dump_pipeline, load_pipeline
from medseg.batch.state import BatchState
from medseg.batch.summary import write_tables
from medseg.batch.worker import CaseFunction, execute_case, get_segmenter, segment_case
from medseg.errors import InputError
from medseg.io.atomic import write_text_atomic

__all__ = ["TABLE_INTERVAL_S", "BatchSummary", "CaseFunction", "execute_case", "get_segmenter", "run_batch",
           "segment_case"]

log = logging.getLogger("medseg.batch")

#: Settings that do not change results (left out of the resume consistency check).
_RUNTIME_ONLY = {"device", "quiet", "threads"}
#: Seconds between rewrites of summary.csv/nodules.csv while a batch runs.
TABLE_INTERVAL_S = 5.0
#: The per-case function recorded in run.json when none is given. Kept at the name it had before
#: segment_case moved to medseg.batch.worker (it is re-exported here), so older OUT folders resume.
_DEFAULT_CASE_FN = "medseg.batch.runner.segment_case"


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
        """The records of the cases that failed."""
        return [r for r in self.records if r["status"] == "failed"]


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
    job = _resolve(inputs, out_dir, workers, scheduler, pipeline, settings, case_fn)
    executor = make_executor(job.workers, job.scheduler, job.cluster)  # no Dask: refused before any write
    cases, source_text = _cases(job.source, job.out)
    state = BatchState(job.out)
    start = time.perf_counter()
    with state.lock():
        _start(state, job, source_text, case_fn)
        records, todo = _split(state, cases, retry_failed)
        summary = BatchSummary(job.out, n_skipped=len(records))
        if summary.n_skipped:
            log.info("resuming: %d of %d cases already finished", summary.n_skipped, len(cases))
        log.info("%d case(s) to run with %s", len(todo), executor.description)
        progress = _Progress(summary, cases, records, len(todo), quiet)
        with progress.shown():
            if todo:  # else everything was finished before: just rewrite the tables
                run_settings = {**job.inference, "quiet": True}  # workers never draw their own progress bars
                executor.run(todo, str(job.out), run_settings, case_fn, progress.on_record)
    summary.records = progress.ordered()
    _count(summary, start)
    return summary


# -- settings ----------------------------------------------------------------------------------
@dataclass
class _Job:
    """A batch's arguments with the pipeline's values filled in and checked."""

    plan: dict[str, Any]
    inference: dict[str, Any]
    source: str | os.PathLike[str] | Iterable[Case]
    out: Path
    workers: int
    scheduler: str | None
    cluster: dict[str, Any] | None


def _resolve(inputs: str | os.PathLike[str] | Iterable[Case] | None, out_dir: str | os.PathLike[str] | None,
             workers: int | None, scheduler: str | None, pipeline: str | os.PathLike[str] | dict[str, Any] | None,
             settings: dict[str, Any], case_fn: CaseFunction | None) -> _Job:
    """The arguments of :func:`run_batch` over the pipeline's values; raises before anything is written."""
    plan = load_pipeline(pipeline)
    inference = _inference(plan, settings)
    execution = plan["execution"]
    source = inputs if inputs is not None else plan.get("input")
    out = out_dir if out_dir is not None else plan.get("output")
    if source is None or out is None:
        raise InputError(None, "a batch needs an input (folder or CSV manifest) and an output folder")
    scheduler = scheduler if scheduler is not None else execution.get("scheduler")
    cluster = execution.get("cluster") if scheduler is None else None
    workers = _workers(workers, execution, inference)
    _check_model(inference.get("model"), case_fn)
    if inference.get("model"):  # absolute: the recorded pipeline must not depend on the current folder
        inference["model"] = str(Path(inference["model"]).resolve())
    return _Job(plan, inference, source, Path(out), workers, scheduler, cluster)


def _inference(plan: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's inference settings, overridden by the ones given (``None``: not given)."""
    inference = dict(plan["inference"])
    inference.update({k: v for k, v in settings.items() if v is not None})
    unknown = sorted(set(inference) - set(plan["inference"]))
    if unknown:
        raise TypeError(f"run_batch() got unknown settings {unknown}")
    check_inference(inference, "settings")
    return inference


def _workers(workers: int | None, execution: dict[str, Any], inference: dict[str, Any]) -> int:
    """How many workers: the argument, else the pipeline's, else one per GPU (at least 1)."""
    gpus = cuda_devices(inference)
    if workers is None:
        workers = execution.get("workers")
    if workers is None:
        workers = len(gpus) if gpus else 1
    workers = int(workers)
    if workers < 0:
        raise InputError(None, f"workers must be 0 or more, got {workers}")
    return workers


# -- state -------------------------------------------------------------------------------------
def _cases(source: str | os.PathLike[str] | Iterable[Case], out: Path) -> tuple[list[Case], str | None]:
    """(the cases, the input as recorded in OUT/pipeline.yaml: None when Case objects were given)."""
    if isinstance(source, (str, os.PathLike)):
        return discover(source, exclude=[out]), str(Path(source).resolve())
    return list(source), None


def _start(state: BatchState, job: _Job, source_text: str | None, case_fn: CaseFunction | None) -> None:
    """Clean OUT of killed runs' leftovers, refuse changed settings, record the resolved pipeline."""
    state.prepare()
    fn_name = f"{case_fn.__module__}.{case_fn.__qualname__}" if case_fn else _DEFAULT_CASE_FN
    state.check_settings({**{k: v for k, v in job.inference.items() if k not in _RUNTIME_ONLY},
                          "model_file": _file_identity(job.inference.get("model")), "case_fn": fn_name},
                         defaults=default_pipeline()["inference"])
    resolved = {**job.plan, "input": source_text, "output": str(job.out.resolve()), "inference": job.inference,
                "execution": {"workers": job.workers, "scheduler": job.scheduler, "cluster": job.cluster}}
    write_text_atomic(job.out / "pipeline.yaml", dump_pipeline(resolved))


def _split(state: BatchState, cases: list[Case], retry_failed: bool) -> tuple[dict[str, dict[str, Any]], list[Case]]:
    """(records of the cases an earlier run finished, or failed when not retrying; the cases to run)."""
    records: dict[str, dict[str, Any]] = {}
    todo: list[Case] = []
    for case in cases:
        previous = state.finished(case) or (None if retry_failed else state.failed(case))
        if previous is not None:
            records[case.case_id] = previous
        else:
            todo.append(case)
    return records, todo


def _count(summary: BatchSummary, start: float) -> None:
    """Fill in the counts and the elapsed time of ``summary`` from its records, and log them."""
    summary.n_done = sum(r["status"] == "done" for r in summary.records)
    summary.n_failed = sum(r["status"] == "failed" for r in summary.records)
    summary.n_no_lung = sum(r["status"] == "no_lung" for r in summary.records)
    summary.elapsed_s = time.perf_counter() - start
    log.info("batch finished: %d done, %d no lung, %d failed, %d resumed, %.1f s", summary.n_done,
             summary.n_no_lung, summary.n_failed, summary.n_skipped, summary.elapsed_s)


# -- progress ----------------------------------------------------------------------------------
class _Progress:
    """The batch's view of finished cases: logs each record, advances the progress bar, and rewrites
    the cohort tables at most every :data:`TABLE_INTERVAL_S` seconds (and once more at the end)."""

    def __init__(self, summary: BatchSummary, cases: list[Case], records: dict[str, dict[str, Any]],
                 total: int, quiet: bool) -> None:
        self.summary = summary
        self.records = records
        self._order = {c.case_id: i for i, c in enumerate(cases)}
        self._last_write = 0.0
        self._counts = {"done": 0, "no_lung": 0, "failed": 0}
        self._bar = _progress_bar(total, quiet)

    def ordered(self) -> list[dict[str, Any]]:
        """Every record so far, in discovery order."""
        return sorted(self.records.values(), key=lambda r: self._order.get(r["case_id"], len(self._order)))

    def write_tables(self, force: bool = False) -> None:
        """Rewrite summary.csv/nodules.csv if ``force`` or the last rewrite is old enough."""
        if force or time.monotonic() - self._last_write >= TABLE_INTERVAL_S:
            self.summary.summary_csv, self.summary.nodules_csv = write_tables(self.summary.out_dir, self.ordered())
            self._last_write = time.monotonic()

    def on_record(self, record: dict[str, Any]) -> None:
        """The executor's callback: one finished case."""
        self.records[record["case_id"]] = record
        self._counts[record["status"]] += 1
        if record["status"] == "done":
            log.info("%s: done, %d nodule(s), %.1f s", record["case_id"], record["n_nodules"], record["runtime_s"])
        elif record["status"] == "no_lung":
            log.warning("%s: no plausible lung in this CT: no nodule search was run", record["case_id"])
        else:
            log.warning("%s: failed: %s", record["case_id"], record["error"])
        counts = self._counts
        self._bar.set_postfix(done=counts["done"], no_lung=counts["no_lung"], failed=counts["failed"], refresh=False)
        self._bar.update(1)
        self.write_tables()

    @contextlib.contextmanager
    def shown(self) -> Iterator[None]:
        """While the cases run: the bar is drawn; after, even on error: closed, and the tables written."""
        # Log lines go through tqdm.write while the bar is drawn, so they do not tear it.
        redirect = contextlib.nullcontext() if self._bar.disable else _logging_redirect()
        try:
            redirect.__enter__()
            yield
        finally:
            self._bar.close()
            redirect.__exit__(None, None, None)
            self.write_tables(force=True)


def _progress_bar(total: int, quiet: bool) -> Any:
    """A tqdm bar on stderr (off when quiet or when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal
    return tqdm(total=total, unit="scan", desc="batch", disable=True if quiet else None, file=sys.stderr)


def _logging_redirect() -> Any:
    """Route log records through ``tqdm.write`` while a bar is drawn."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


# -- the model ---------------------------------------------------------------------------------
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
    """Path, size and mtime of the checkpoint (None if unreadable): a changed model is a changed setting."""
    if model is None:
        from medseg.models import BUNDLED_MODEL

        model = str(BUNDLED_MODEL)
    try:
        st = Path(model).stat()
    except OSError:
        return None
    return {"path": str(Path(model).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
