"""The one exception type for bad input.

Every reader, validator and stage raises :class:`InputError` when the data a user handed us is
unusable. The CLI turns it into a single readable line and exit code 2.
"""

from __future__ import annotations

import os


class InputError(ValueError):
    """Bad input: names the offending file and the problem.

    >>> str(InputError("scan.nii.gz", "file is truncated"))
    'scan.nii.gz: file is truncated'
    """

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if self.path is None else f"{self.path}: {problem}")
