"""Resumable batch state in ``OUT/.medseg_batch/``.

How "every case done exactly once, no partial files" survives ``kill -9``:

1. A case runs into its own temporary folder ``OUT/.medseg_batch/work/<case>.partial-<token>/``.
2. When all its outputs are written, the folder is renamed to ``OUT/<case>/`` (one atomic rename,
   so a case's outputs appear all together or not at all).
3. Only then is the done marker ``OUT/.medseg_batch/<case>.done.json`` written (atomically). The
   marker is the single source of truth: a case is finished iff its marker exists and matches
   the input's current size/mtime.
4. On start, anything named ``*.partial-*`` under OUT is deleted (leftovers of killed writers),
   and a case folder without a marker is redone and replaced.

A lock file stops two batches from writing into the same OUT at once; the OS drops it when the
holding process dies, even by ``kill -9``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medseg.batch.discover import STATE_DIRNAME, Case
from medseg.errors import InputError
from medseg.io.atomic import PARTIAL_MARK, write_json_atomic

log = logging.getLogger(__name__)

DONE_SUFFIX = ".done.json"
FAILED_SUFFIX = ".failed.json"


class BatchState:
    """Markers and working folders of one batch output folder."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = Path(out_dir)
        self.dir = self.out_dir / STATE_DIRNAME
        self.work_dir = self.dir / "work"

    # -- lifecycle ---------------------------------------------------------------------------
    def prepare(self) -> int:
        """Create the folders and delete leftovers of killed runs; returns how many were removed."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return remove_partials(self.out_dir)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock on OUT for the duration of a batch (POSIX ``flock``; no-op elsewhere)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        with open(self.dir / "lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise InputError(self.out_dir, "another medseg batch is writing to this folder") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def check_settings(self, settings: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
        """Refuse to resume into OUT with different result-changing settings (stale results).

        A setting that a run recorded by an older medseg did not have yet counts as unchanged
        while it is at its value in ``defaults`` (what that older run did).
        """
        path = self.dir / "run.json"
        if path.is_file():
            try:
                previous = json.loads(path.read_text(encoding="utf-8")).get("settings")
            except (OSError, ValueError):
                previous = None
            if previous is not None:
                previous = {**{k: v for k, v in _jsonable(defaults or {}).items() if k in settings}, **previous}
            if previous is not None and previous != _jsonable(settings):
                changed = sorted(k for k in set(previous) | set(settings)
                                 if previous.get(k) != _jsonable(settings).get(k))
                raise InputError(
                    self.out_dir,
                    f"holds results of a batch with different settings ({', '.join(changed)}); "
                    "use a new output folder to run with these settings",
                )
        write_json_atomic(path, {"settings": _jsonable(settings)})

    # -- per case ----------------------------------------------------------------------------
    def marker(self, case_id: str, status: str = "done") -> Path:
        """The marker file of a finished (done or no_lung) or failed case."""
        return self.dir / f"{case_id}{DONE_SUFFIX if status in FINISHED else FAILED_SUFFIX}"

    def finished(self, case: Case) -> dict[str, Any] | None:
        """The recorded result of ``case`` if it is done for the input as it is now, else None."""
        record = _read_json(self.marker(case.case_id, "done"))
        if record is None or record.get("fingerprint") != case.fingerprint():
            return None
        if not (self.out_dir / case.case_id).is_dir():
            return None  # outputs were removed by hand: redo
        return record

    def failed(self, case: Case) -> dict[str, Any] | None:
        """The recorded failure of ``case`` (if any) for the input as it is now."""
        record = _read_json(self.marker(case.case_id, "failed"))
        if record is None or record.get("fingerprint") != case.fingerprint():
            return None
        return record

    def new_work_dir(self, case_id: str) -> Path:
        """A fresh temporary folder for one attempt at a case."""
        path = self.work_dir / f"{case_id}{PARTIAL_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        path.mkdir(parents=True)
        return path

    def publish(self, case_id: str, work: Path) -> Path:
        """Rename the finished work folder to ``OUT/<case>`` (replacing an unmarked older one)."""
        final = self.out_dir / case_id
        if final.exists():
            # An older copy without a valid marker (killed after rename, or redone): move it aside
            # under a partial name first, so a kill now still leaves only cleanable leftovers.
            old = self.work_dir / f"{case_id}{PARTIAL_MARK}old-{secrets.token_hex(4)}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(work, final)
        return final

    def record(self, record: dict[str, Any]) -> None:
        """Write the marker for a finished attempt (after its outputs are in place)."""
        status = record["status"]
        write_json_atomic(self.marker(record["case_id"], status), record)
        # Only one marker per case: a done case forgets an earlier failure and vice versa.
        other = self.marker(record["case_id"], "failed" if status in FINISHED else "done")
        with contextlib.suppress(FileNotFoundError):
            other.unlink()


#: statuses of a case that ran to the end: "no_lung" is a CT in which no plausible lung was found,
#: so no search ran (it is never counted as a case with 0 nodules)
FINISHED = ("done", "no_lung")


def remove_partials(root: str | os.PathLike[str]) -> int:
    """Delete every file or folder under ``root`` whose name contains ``.partial-``."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in list(dirnames):
            if PARTIAL_MARK in name:
                shutil.rmtree(Path(dirpath) / name, ignore_errors=True)
                dirnames.remove(name)
                removed += 1
        for name in filenames:
            if PARTIAL_MARK in name:
                with contextlib.suppress(FileNotFoundError):
                    (Path(dirpath) / name).unlink()
                removed += 1
    if removed:
        log.info("removed %d partial file(s) left by an interrupted run", removed)
    return removed


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
