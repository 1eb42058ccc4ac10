"""Model bundles: safetensors weights plus a JSON sidecar, validated on load, never unpickled.

A bundle is a folder holding ``weights.safetensors`` and ``bundle.json``. The
sidecar records the architecture, normalisation, the mask the model was
trained for, a training-data summary, the package version and the sha256 of
the weights file; loading checks all of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import BundleError, BundleIntegrityError, BundleMismatchError
from .recurrent import ModelConfig, RecurrentProximalNet

log = logging.getLogger(__name__)

FORMAT = "rgancs-bundle"
FORMAT_VERSION = 1
SIDECAR = "bundle.json"
WEIGHTS = "weights.safetensors"
DEFAULT_NORMALISATION = {"kind": "percentile", "percentile": 99.0}
#: The one network a bundle may hold (the sidecar's ``architecture``; a bundle without the field is taken as it).
ARCHITECTURE = "RecurrentProximalNet"
_REQUIRED = (
    "format",
    "format_version",
    "model",
    "normalisation",
    "mask",
    "training_data",
    "package_version",
    "weights_file",
    "weights_sha256",
)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Bundle:
    """A loaded, validated model with its sidecar."""

    model: RecurrentProximalNet
    sidecar: dict[str, Any]
    path: Path
    name: str = field(default="")

    @property
    def sha256(self) -> str:
        """sha256 of the weights file."""
        return str(self.sidecar["weights_sha256"])

    @property
    def normalisation(self) -> dict[str, Any]:
        """How inputs were scaled in training (e.g. 99th percentile of |zero-filled|)."""
        return dict(self.sidecar["normalisation"])


def save_bundle(
    model: RecurrentProximalNet,
    folder: str | Path,
    *,
    mask: dict[str, Any],
    training_data: dict[str, Any],
    normalisation: dict[str, Any] | None = None,
    name: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a bundle folder; returns the sidecar path. The files get the usual mode (0666 less the
    umask), so a service account can load a bundle its owner trained."""
    from .. import __version__
    from ..console import make_readable

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": FORMAT})
    make_readable(weights)  # safetensors writes through a private (0600) temporary file
    sidecar = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name or folder.name,
        "architecture": ARCHITECTURE,
        "model": model.config.to_dict(),
        "normalisation": normalisation or dict(DEFAULT_NORMALISATION),
        "mask": mask,
        "training_data": training_data,
        "package_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "weights_file": WEIGHTS,
        "weights_sha256": sha256_file(weights),
        "parameters": sum(p.numel() for p in model.parameters()),
        **(extra or {}),
    }
    path = folder / SIDECAR
    path.write_text(json.dumps(sidecar, indent=2) + "\n")
    return path


def _read_sidecar(path: Path) -> tuple[Path, dict[str, Any]]:
    folder = path if path.is_dir() else path.parent
    sidecar_path = folder / SIDECAR if path.is_dir() else path
    if not sidecar_path.is_file():
        raise BundleError(f"no model bundle at {path}: expected a folder with {SIDECAR} and {WEIGHTS}")
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{sidecar_path} is not valid JSON ({exc}); the bundle is damaged") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise BundleError(f"{sidecar_path} is not an {FORMAT} sidecar")
    missing = [k for k in _REQUIRED if k not in sidecar]
    if missing:
        raise BundleError(f"{sidecar_path} lacks {', '.join(missing)}; the bundle is incomplete")
    if sidecar["format_version"] != FORMAT_VERSION:
        raise BundleError(
            f"{sidecar_path} has format version {sidecar['format_version']}, this plugin reads "
            f"{FORMAT_VERSION}; re-export the bundle"
        )
    return folder, sidecar


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load and validate a bundle (folder or its bundle.json); the model is returned in eval mode."""
    folder, sidecar = _read_sidecar(Path(path))
    weights = folder / Path(str(sidecar["weights_file"])).name
    if not weights.is_file():
        raise BundleError(f"weights file {weights} is missing")
    digest = sha256_file(weights)
    if digest != sidecar["weights_sha256"]:
        raise BundleIntegrityError(
            f"{weights} has sha256 {digest[:12]}... but the sidecar records "
            f"{str(sidecar['weights_sha256'])[:12]}...; the weights were altered or truncated"
        )
    if sidecar.get("architecture", ARCHITECTURE) != ARCHITECTURE:
        raise BundleMismatchError(
            f"{folder} holds a {sidecar['architecture']!r} model; this plugin runs {ARCHITECTURE} bundles"
        )
    described = sidecar["model"]
    if not isinstance(described, dict):
        raise BundleMismatchError(f"the sidecar's model description is not a table: {described!r}")
    unknown = sorted(set(described) - {f.name for f in fields(ModelConfig)})
    if unknown:
        raise BundleMismatchError(
            f"the sidecar's model names settings this plugin does not know ({', '.join(unknown)}): a bundle for "
            "another architecture or a newer version"
        )
    try:
        config = ModelConfig(**described)
    except (TypeError, ValueError) as exc:
        raise BundleMismatchError(f"the sidecar's model description is invalid: {exc}") from exc
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise BundleIntegrityError(f"{weights} is not a readable safetensors file: {exc}") from exc
    model = RecurrentProximalNet(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleMismatchError(
            f"the weights in {weights} do not fit the architecture in the sidecar ({config}): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    built = sum(p.numel() for p in model.parameters())
    if sidecar.get("parameters") is not None and sidecar["parameters"] != built:
        raise BundleMismatchError(
            f"the sidecar records {sidecar['parameters']} parameters, the architecture it describes has {built}"
        )
    model.eval().to(device)
    log.info("loaded bundle %s (sha256 %s)", folder, digest[:12])
    return Bundle(model=model, sidecar=sidecar, path=folder, name=str(sidecar.get("name", folder.name)))
