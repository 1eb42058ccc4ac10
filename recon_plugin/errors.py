"""Named errors raised by recon_plugin.

Every error a scanner operator can meet derives from :class:`ReconError` and
carries a message that says what was wrong and what to do about it.
"""

from __future__ import annotations


class ReconError(Exception):
    """Base class of every error the plugin raises on purpose."""


class InvalidInputError(ReconError, ValueError):
    """Input data are malformed: wrong shapes, wrong dtype, or inconsistent."""


class NonFiniteDataError(InvalidInputError):
    """Input contains NaN or infinite values."""


class ShapeMismatchError(InvalidInputError):
    """Two arrays that must agree in shape do not."""


class EmptyMaskError(InvalidInputError):
    """A sampling mask selects no k-space points."""


class MaskSpecError(ReconError, ValueError):
    """A sampling-mask request cannot be met (e.g. acceleration < 1)."""


class CoilMapError(ReconError):
    """Coil sensitivities could not be estimated from the data."""


class BundleError(ReconError):
    """A model bundle is missing, tampered, truncated or inconsistent."""


class BundleIntegrityError(BundleError):
    """The weights file does not match the sha256 recorded in its sidecar."""


class BundleMismatchError(BundleError):
    """The weights do not fit the architecture the sidecar describes."""


class DeviceError(ReconError, RuntimeError):
    """The requested compute device is not available."""


class FastPathError(ReconError, ValueError):
    """An unknown inference fast path, or one the device cannot run (CUDA graphs on a CPU)."""


class IsmrmrdFormatError(InvalidInputError):
    """An ISMRMRD file, header or stream is malformed, truncated or lacks required fields."""


class ImageGroupError(IsmrmrdFormatError):
    """An ISMRMRD image file lacks the named image group, or holds several and none was named."""


class FileLockedError(InvalidInputError):
    """A valid input file is locked by another process (e.g. an HDF5 writer that still has it open)."""


class EncodingError(InvalidInputError):
    """The acquisition's encoding cannot be reconstructed here (non-Cartesian, no limits, lines outside the matrix)."""


class MemoryLimitError(EncodingError):
    """An exam's k-space buffers would need more memory than this machine can give (or its operator allows)."""


class ProtocolError(ReconError):
    """A Gadgetron protocol (XML pipeline) is invalid or needs parts this runtime does not have."""


class GadgetFailedError(ReconError):
    """A gadget reported an error (Gadgetron ERROR message) or died before closing its stream."""


class StreamTimeoutError(ReconError, TimeoutError):
    """A peer did not send or accept data within the time limit."""


class ClientTooSlowError(StreamTimeoutError):
    """A client took longer than the server allows to send one message (a trickle holds an exam slot)."""


class BartNotFoundError(ReconError):
    """The BART command-line tool is not installed or not on PATH / TOOLBOX_PATH."""


class BartFailedError(ReconError):
    """BART ran but failed; the message carries BART's own output."""


class BartTimeoutError(BartFailedError, TimeoutError):
    """BART did not finish a slice within its time limit."""


class UnknownConfigurationError(ProtocolError):
    """A client asked for a configuration (protocol) name the server does not have."""


class ClientDisconnectedError(ReconError, ConnectionError):
    """The client closed the connection before the end of its stream."""


class MessageTooLargeError(ProtocolError):
    """A client's message declares more data than the server accepts (refused before its data is read)."""


class ExamTooLargeError(MessageTooLargeError):
    """A client's exam sent more bytes than the server accepts for one exam (``serve --max-exam-bytes``)."""


class ServerBusyError(ReconError):
    """The server cannot take this connection now (no free exam slot in time); try again later."""


class TooManyConnectionsError(ServerBusyError):
    """The client's address already holds as many connections as the server allows (``serve --max-per-peer``)."""


class OutputPathError(ReconError):
    """An output file cannot be written: its folder is missing or not writable, or the path is a folder."""


class OutputExistsError(OutputPathError):
    """The output file exists already and replacing it was not asked for (``--overwrite``)."""
