"""Run logging: ``metrics.csv`` (rewritten atomically each epoch) and TensorBoard when installed."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from medseg.io.atomic import write_text_atomic

log = logging.getLogger("medseg.training")

COLUMNS = ["epoch", "step", "train_loss", "val_dice", "lr", "time"]


class MetricsLogger:
    """Keeps all rows in memory and rewrites the CSV atomically, so it is never half-written."""

    def __init__(self, run_dir: Path, rows: list[dict[str, Any]] | None = None, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.rows: list[dict[str, Any]] = list(rows or [])
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # TensorBoard streams its event file (append-only by design): not atomic.
                self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            except Exception:  # tensorboard missing or broken: CSV is enough
                self.tb = None

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append({k: row.get(k) for k in COLUMNS})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
        write_text_atomic(self.path, buf.getvalue())
        if self.tb is not None:
            step = int(row["step"])
            for key in ("train_loss", "val_dice", "lr"):
                if row.get(key) is not None:
                    self.tb.add_scalar(key, float(row[key]), step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
