"""Named errors of the blinded reader study (all derive from :class:`recon_plugin.errors.ReconError`)."""

from __future__ import annotations

from ..errors import ReconError


class ReviewError(ReconError):
    """Base class of the reader-study errors."""


class StudyInputError(ReviewError, ValueError):
    """The images given to ``review new`` cannot make a study (unreadable, no pairs, bad options)."""


class StudyExistsError(ReviewError, FileExistsError):
    """The study folder already holds a study or other files."""


class StudyFormatError(ReviewError):
    """``study.json`` is missing, unreadable or not a reader-study file."""


class StudyVersionError(StudyFormatError):
    """The study folder or its database was written by an older or newer version of this tool."""


class CorruptDatabaseError(ReviewError):
    """The answers database is not a readable SQLite file of this study."""


class AnswerError(ReviewError, ValueError):
    """A posted answer is malformed or holds values outside the rubric."""
