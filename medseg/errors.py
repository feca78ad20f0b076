"""The one exception type for bad input.

Every reader, validator and stage raises :class:`InputError` when the data a user handed us is
unusable. The CLI turns it into a single readable line and exit code 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


class InputError(ValueError):
    """Bad input: names the offending file and the problem.

    >>> str(InputError("scan.nii.gz", "file is truncated"))
    'scan.nii.gz: file is truncated'
    """

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if self.path is None else f"{self.path}: {problem}")


class MissingExtraError(InputError):
    """An optional dependency that this input or option needs is not installed.

    >>> str(MissingExtraError("the Dask scheduler", "cluster"))
    'the Dask scheduler needs an optional dependency: pip install "medseg[cluster]"'
    """

    def __init__(self, what: str, extra: str, path: str | os.PathLike[str] | None = None,
                 why: str = "an optional dependency") -> None:
        self.extra = extra
        super().__init__(path, f'{what} needs {why}: pip install "medseg[{extra}]"')


@dataclass
class ScanFailure:
    """One scan of a multi-scan run that was bad input."""

    input: str
    case: str
    reason: str


class ScansFailed(InputError):
    """Some scans of a multi-scan run were bad input; the others were processed and written.

    ``results`` holds what the good scans gave (e.g. ``CaseResult``s), ``failures`` the bad ones.
    """

    def __init__(self, failures: list[ScanFailure], n_total: int, results: list[Any]) -> None:
        self.failures = failures
        self.results = results
        self.n_total = n_total
        detail = "; ".join(f"{f.case} ({f.reason})" for f in failures)
        super().__init__(None, f"{len(failures)} of {n_total} scans failed: {detail}")
