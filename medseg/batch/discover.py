"""Find the cases of a batch: scans in a folder tree, or the rows of a CSV manifest.

A folder is searched recursively for NIfTI/NRRD/MHA/MHD files and DICOM series (grouped by
SeriesInstanceUID, CT series only). A folder that holds DICOM-looking files but no readable image
series, or an empty leaf folder, becomes a case that fails with its reason, so a broken export
shows up in the summary instead of vanishing silently.

Case ids come from the input's path relative to the batch root (separators -> ``__``, image
extension stripped), so every output maps back to its source. They never come from DICOM headers.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import InputError
from medseg.io.readers import DICOM_SUFFIXES, case_name, is_image_file

log = logging.getLogger(__name__)

#: Files that are part of a single-file image (MHD data) or obviously not DICOM.
_NOT_DICOM = (".raw", ".zraw", ".json", ".csv", ".txt", ".md", ".png", ".jpg", ".jpeg", ".yaml", ".yml",
              ".xml", ".html", ".pdf", ".log", ".py", ".gz", ".zip", ".tar")
#: Name of medseg's batch state folder; an output folder found inside the input is never an input.
STATE_DIRNAME = ".medseg_batch"
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-+=@,]+")


@dataclass
class Case:
    """One unit of batch work: a scan file or a DICOM series folder.

    ``error`` is set when discovery already knows the case cannot be read (it is recorded as
    failed without running). ``files`` lists a DICOM series' files (empty for single files).
    """

    case_id: str
    input: str
    kind: str = "file"  # "file" | "dicom"
    series_uid: str | None = None
    #: True when the series shares its folder with another CT series, so it must be isolated.
    shared_folder: bool = False
    files: list[str] = field(default_factory=list)
    error: str | None = None

    def fingerprint(self) -> dict[str, int]:
        """Size and modification time of the input's files: a changed input is redone on resume."""
        paths = [Path(f) for f in self.files] if self.files else [Path(self.input)]
        total, newest, count = 0, 0, 0
        for p in paths:
            try:
                st = p.stat()
            except OSError:
                continue
            if p.is_dir():
                continue
            total += st.st_size
            newest = max(newest, st.st_mtime_ns)
            count += 1
        return {"files": count, "bytes": total, "mtime_ns": newest}


def discover(source: str | os.PathLike[str], exclude: Iterable[str | os.PathLike[str]] = ()) -> list[Case]:
    """Cases from a folder (searched recursively) or a CSV manifest (``path`` [, ``case_id``]).

    ``exclude`` lists folders never searched (the batch output folder when it lies inside the
    input). Raises :class:`InputError` for a missing source, a bad manifest or no cases at all.
    """
    src = Path(source)
    if not src.exists():
        raise InputError(src, "no such file or folder")
    if src.is_file():
        if src.suffix.lower() == ".csv":
            cases = read_manifest(src)
        elif is_image_file(src):
            cases = [Case(case_name(src), str(src))]
        else:
            raise InputError(src, "batch input must be a folder, a CSV manifest or an image file")
    else:
        cases = discover_folder(src, exclude=exclude)
    if not cases:
        raise InputError(src, "no scans found (NIfTI/NRRD/MHA/MHD files or DICOM CT series)")
    return cases


def discover_folder(root: str | os.PathLike[str], exclude: Iterable[str | os.PathLike[str]] = ()) -> list[Case]:
    """All image files and CT DICOM series under ``root``, plus failed cases for unreadable DICOM folders."""
    from medseg.io.dicom import find_dicom_series

    root = Path(root)
    excluded = {Path(e).resolve() for e in exclude}

    def skipped(folder: Path) -> bool:
        resolved = folder.resolve()
        return any(resolved == e or e in resolved.parents for e in excluded) or (folder / STATE_DIRNAME).is_dir()

    entries: list[tuple[str, Case]] = []  # (relative key for ordering, case)
    folders_with_images: set[Path] = set()
    dicom_like: dict[Path, list[Path]] = {}
    empty_leaves: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        folder = Path(dirpath)
        if skipped(folder):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        visible = sorted(f for f in filenames if not f.startswith("."))
        if not visible and not dirnames and folder != root:
            empty_leaves.append(folder)
        for name in visible:
            path = folder / name
            if is_image_file(path):
                entries.append((str(path.relative_to(root)), Case("", str(path), "file")))
                folders_with_images.add(folder)
            elif _looks_dicom(path):
                dicom_like.setdefault(folder, []).append(path)

    series = [s for s in find_dicom_series(root, recursive=True) if not skipped(s.folder)]
    by_folder: dict[Path, list] = {}
    for s in series:
        by_folder.setdefault(Path(s.folder), []).append(s)
    n_other = 0
    for folder, group in by_folder.items():
        ct = sorted((s for s in group if (s.modality or "").upper() == "CT"), key=lambda s: (-s.n_files, s.series_uid))
        n_other += len(group) - len(ct)
        for idx, s in enumerate(ct):
            rel = str(folder.relative_to(root)) if folder != root else ""
            suffix = f"{os.sep}series{idx + 1}" if len(ct) > 1 else ""
            entries.append((rel + suffix, Case("", str(folder), "dicom", s.series_uid, len(ct) > 1,
                                               sorted(str(f) for f in s.files))))
    if n_other:
        log.info("skipped %d non-CT DICOM series", n_other)

    for folder, files in dicom_like.items():
        if folder in by_folder:
            continue  # images were found here (possibly non-CT series, skipped above)
        rel = str(folder.relative_to(root)) if folder != root else ""
        entries.append((rel, Case("", str(folder), "dicom", error=_why_no_dicom_image(files))))
    for folder in empty_leaves:
        entries.append((str(folder.relative_to(root)), Case("", str(folder), "dicom",
                                                            error="empty folder: no image files or DICOM series")))

    entries.sort(key=lambda e: e[0])
    ids = _unique_ids([_id_from_relative(rel, root) for rel, _ in entries])
    cases = []
    for (_, case), cid in zip(entries, ids):
        case.case_id = cid
        cases.append(case)
    return cases


def read_manifest(path: str | os.PathLike[str]) -> list[Case]:
    """Cases from a CSV with a ``path`` column (files or DICOM folders; relative to the CSV) and
    an optional ``case_id`` column. Missing paths become failed cases."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            fields = [f.strip() for f in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot read CSV manifest ({exc})") from exc
    if "path" not in fields:
        raise InputError(path, f"manifest needs a 'path' column (found columns: {', '.join(fields) or 'none'})")
    base = path.parent
    cases, ids, seen = [], [], set()
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        raw = row.get("path", "")
        if not raw:
            raise InputError(path, f"line {line}: empty 'path'")
        p = Path(raw).expanduser()
        p = p if p.is_absolute() else base / p
        cid = row.get("case_id") or ""
        if cid:
            cid = _sanitise(cid)
            if cid in seen:
                raise InputError(path, f"line {line}: duplicate case_id {cid!r}")
        else:
            try:
                rel = str(p.relative_to(base))
            except ValueError:
                rel = p.name
            cid = _id_from_relative(rel, base)
        seen.add(cid)
        ids.append(cid)
        kind = "dicom" if p.is_dir() else "file"
        error = None if p.exists() else "no such file or folder"
        cases.append(Case("", str(p), kind, error=error))
    for case, cid in zip(cases, _unique_ids(ids)):
        case.case_id = cid
    return cases


def _looks_dicom(path: Path) -> bool:
    """DICOM-named files, plus extension-less files (common in exports) that carry the DICM preamble."""
    lower = path.name.lower()
    if lower.endswith(DICOM_SUFFIXES):
        return True
    if lower.endswith(_NOT_DICOM) or "." in path.name and len(path.suffix) <= 5 and path.suffix[1:].isalpha():
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _why_no_dicom_image(files: list[Path]) -> str:
    """A short reason naming what was found, without reading any patient data."""
    empty = sum(1 for f in files if _size(f) == 0)
    n = len(files)
    detail = f"{empty} empty" if empty else "none readable as an image slice"
    return (f"no readable DICOM image series in this folder ({n} DICOM file{'s' if n != 1 else ''}, {detail}; "
            "expected CT slices with pixel data and geometry)")


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return -1


def _id_from_relative(rel: str, root: Path) -> str:
    rel = rel.strip(os.sep).strip("/")
    if not rel or rel == ".":
        rel = root.resolve().name or "case"
    parts = [p for p in re.split(r"[\\/]+", rel) if p and p != "."]
    parts[-1] = case_name(parts[-1]) or parts[-1]
    return _sanitise("__".join(parts))


def _sanitise(text: str) -> str:
    """Keep case ids safe as file names on every platform."""
    cleaned = _UNSAFE.sub("_", text).strip("._") or "case"
    return cleaned[:200]


def _unique_ids(ids: list[str]) -> list[str]:
    """Disambiguate collisions (``a/b.nii`` and ``a__b.nii.gz``) deterministically: ``x``, ``x__2``..."""
    out, used = [], set()
    for cid in ids:
        candidate, n = cid, 1
        while candidate.lower() in used:  # case-insensitive filesystems
            n += 1
            candidate = f"{cid}__{n}"
        used.add(candidate.lower())
        out.append(candidate)
    return out
