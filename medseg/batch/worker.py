"""What runs for one case, in whichever process an executor puts it there.

- :func:`execute_case`: one case end to end (work folder, publish, marker); never raises, so one
  bad scan never stops the rest.
- :func:`segment_case`: the default per-case function, on a per-process Segmenter cache
  (:func:`get_segmenter`: one model per process, reused for every case it runs).
- Worker-process setup for the local process pool (:func:`init_pool_worker`: threads, GPU pinning,
  the batch's pid so that an orphaned worker publishes nothing after ``kill -9`` of the batch).
- Patient identifiers from DICOM headers are scrubbed from every message a case record carries.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medseg.batch.discover import Case
from medseg.batch.state import BatchState
from medseg.errors import InputError

log = logging.getLogger("medseg.batch")

#: A per-case function: (case, work folder, settings) -> result dict with at least n_nodules,
#: largest_diameter_mm, nodules (list of dicts), warnings (list of str). Must be importable
#: (module-level) so worker processes can unpickle it.
CaseFunction = Callable[[Case, Path, dict[str, Any]], dict[str, Any]]

# -- per-process state (local pool workers, Dask workers, or the batch process for workers=0) --------
_SEGMENTERS: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()
_THREADS_SET = False
#: the batch process's pid, set in local pool workers only (None elsewhere)
_PARENT_PID: int | None = None


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
    state = BatchState(out_dir)
    start = time.perf_counter()
    record: dict[str, Any] = {"case_id": case.case_id, "input": case.input, "fingerprint": case.fingerprint()}
    work = None
    try:
        if case.error:
            raise InputError(case.input, case.error)
        _set_threads(settings)
        work = state.new_work_dir(case.case_id)
        result = (case_fn or segment_case)(case, work, settings)
        if _orphaned():  # the batch was killed: a re-run owns OUT now, publish nothing
            os._exit(1)
        final = state.publish(case.case_id, work)
        work = None
        record.update(_finished_fields(result, case, final))
    except Exception as exc:  # one case never stops the batch: record why and go on
        log.debug("case %s failed:\n%s", case.case_id, redact(traceback.format_exc(), case))
        record.update(status="failed", n_nodules=None, largest_diameter_mm=None, nodules=[], warnings=[],
                      error=redact(_reason(exc), case))
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    record["runtime_s"] = round(time.perf_counter() - start, 3)
    if _orphaned():
        os._exit(1)
    try:
        state.record(record)
    except OSError as exc:  # OUT unwritable: the parent still learns the result
        record["error"] = (record.get("error") or "") + f" (marker not written: {exc})"
    return record


def _finished_fields(result: dict[str, Any], case: Case, final: Path) -> dict[str, Any]:
    """The record fields of a case whose outputs were published to ``final``."""
    no_lung = result.get("status") == "no_lung"
    return {
        "status": "no_lung" if no_lung else "done",
        "n_nodules": None if no_lung else int(result.get("n_nodules") or 0),
        "largest_diameter_mm": result.get("largest_diameter_mm"),
        "nodules": result.get("nodules") or [],
        "warnings": [redact(w, case) for w in result.get("warnings") or []],
        "timings": result.get("timings") or {},
        "output_dir": final.name,
        "error": "",
    }


def _set_threads(settings: dict[str, Any]) -> None:
    """Apply ``settings["threads"]`` (set by the Dask executor) to torch, once per process."""
    global _THREADS_SET
    if settings.get("threads") and not _THREADS_SET:
        import torch

        torch.set_num_threads(int(settings["threads"]))
        _THREADS_SET = True


def worker_died(case: Case, out_dir: str) -> dict[str, Any]:
    """Record (marker included) a case whose worker process vanished while running it."""
    record = {"case_id": case.case_id, "input": case.input, "fingerprint": case.fingerprint(), "status": "failed",
              "n_nodules": None, "largest_diameter_mm": None, "nodules": [], "warnings": [], "runtime_s": 0.0,
              "error": "the worker process died while running this case (out of memory or a crash)"}
    BatchState(out_dir).record(record)
    return record


def _reason(exc: BaseException) -> str:
    """One line saying why a case failed (an InputError's problem, else the exception's first line)."""
    if isinstance(exc, InputError):
        return exc.problem
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


# -- local pool worker processes -------------------------------------------------------------------
def _orphaned() -> bool:
    """True in a pool worker whose batch process has died (e.g. ``kill -9`` of the batch only)."""
    return _PARENT_PID is not None and os.getppid() != _PARENT_PID


def init_pool_worker(settings: dict[str, Any], threads: int, gpu_queue: Any, preload: bool) -> None:
    """Initializer of a local pool worker: its GPU, its thread counts, optionally its Segmenter."""
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


# -- patient identifiers ---------------------------------------------------------------------------
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


def redact(text: str, case: Case) -> str:
    """Remove patient names/IDs from DICOM headers out of a message (defence in depth)."""
    for ident in _identifiers(case) if text else []:
        text = re.sub(re.escape(ident), "[redacted]", text, flags=re.IGNORECASE)
    return text
