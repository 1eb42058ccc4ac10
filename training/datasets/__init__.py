"""Training data sets: ISMRMRD raw and fastMRI files, image arrays with simulated k-space, image folders for
super-resolution.

Every MR data set returns ``training.data.Batch(y, op, x)`` normalised exactly as ``RGANCS`` does at
inference; the super-resolution set returns ``SRBatch(y, op, x, x0)``. Each keeps its random state
in ``rng`` (a numpy Generator) for checkpointing.
"""

from .arrays import ImageArraySlices, Split, extra_training_slices, fit_matrix, load_many, load_slices, siat_blocks
from .base import DatasetError, EmptyDatasetError, ImageTooSmallError, NotFullySampledError, UnreadableImageError
from .fastmri import FastMRIFile, FastMRISlices, hdf5_kind
from .ismrmrd_raw import RawFileSlices, RawSlice, assemble_file
from .superres import ImageFolderSR, SRBatch

__all__ = [
    "DatasetError",
    "EmptyDatasetError",
    "FastMRIFile",
    "FastMRISlices",
    "ImageArraySlices",
    "ImageFolderSR",
    "ImageTooSmallError",
    "NotFullySampledError",
    "RawFileSlices",
    "RawSlice",
    "SRBatch",
    "Split",
    "UnreadableImageError",
    "assemble_file",
    "extra_training_slices",
    "fit_matrix",
    "hdf5_kind",
    "load_many",
    "load_slices",
    "siat_blocks",
]
