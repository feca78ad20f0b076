"""Batch runs over many scans: discovery, resumable state, local and Dask executors, cohort tables."""

from medseg.batch.discover import Case, discover
from medseg.batch.runner import BatchSummary, run_batch

__all__ = ["BatchSummary", "Case", "discover", "run_batch"]
