"""Named errors of the training package."""

from __future__ import annotations

from recon_plugin.errors import ReconError


class TrainingConfigError(ReconError, ValueError):
    """A training configuration has an unknown key or an impossible value; the message names the key."""


class CheckpointError(ReconError):
    """A training checkpoint is missing, damaged, or does not fit the run it is resumed into."""
