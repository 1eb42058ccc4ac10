"""The training log: CSV rows in the run folder, mirrored to TensorBoard scalars."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


class RunLog:
    """Writes each row to the CSV file and, on the main rank, as TensorBoard scalars ``<kind>/<column>``."""

    def __init__(self, fh: IO[str], writer: csv.DictWriter, tensorboard_dir: Path | None) -> None:
        self.fh = fh
        self.csv = writer
        self.tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency; keep the CSV if it is missing anyway
                log.warning("tensorboard is not installed: logging to CSV only")
            else:
                self.tb = SummaryWriter(str(tensorboard_dir))

    def writerow(self, row: dict[str, Any]) -> None:
        """One CSV row; numeric columns also go to TensorBoard at the row's step."""
        self.csv.writerow(row)
        if self.tb is not None and str(row.get("step", "")).isdigit():
            kind = row.get("kind", "train")
            for key, value in row.items():
                if key not in ("step", "kind") and isinstance(value, int | float):
                    self.tb.add_scalar(f"{kind}/{key}", value, int(row["step"]))

    def flush(self) -> None:
        """Flush both outputs."""
        self.fh.flush()
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        """Close both outputs."""
        self.fh.close()
        if self.tb is not None:
            self.tb.close()
