"""The study folder: reading list, blinded images, per-reader randomisation and tokens.

Layout of ``STUDY_DIR``::

    study.json        format + version, rubric, pairs, images, items, readers (token, order, sides, aliases)
    images/<hex>.f32  one float32 little-endian [rows, columns] array per image, random names
    answers.sqlite    the readers' answers (:mod:`recon_plugin.review.store`)

Each item is a pair of two methods on the same exam and slice (or, optionally, one image to score alone).
Every reader gets their own random order and their own left/right sides, balanced per method pair
(each method is on the left in half of that pair's items, to within one), and their own random image
aliases, so neither URLs nor file names nor the order of the list tell the methods apart. Each image
is divided by its own 99.5th percentile, so the intensity scale does not give the method away either.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StudyExistsError, StudyFormatError, StudyInputError, StudyVersionError
from .sources import SourceImage, collect_images

logger = logging.getLogger(__name__)

STUDY_FORMAT = "recon-plugin-review-study"
STUDY_VERSION = 1
STUDY_FILE = "study.json"
IMAGES_DIR = "images"
DB_FILE = "answers.sqlite"
IMAGE_SUFFIX = ".f32"

#: The 5-point rubric of the GANCS reader study: criterion -> label; scores 1..5.
RUBRIC = {"quality": "Overall image quality", "artefacts": "Residual artefacts", "blurring": "Blurring"}
SCALE = {1: "non-diagnostic", 2: "poor", 3: "adequate", 4: "good", 5: "excellent"}
#: RGANCS against each baseline, and against zero-filled as a sanity check.
DEFAULT_PAIRS = (("rgancs", "cs_wavelet"), ("rgancs", "cs_tv"), ("rgancs", "zero_filled"))
NORMALISE_PERCENTILE = 99.5

_READER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}")


@dataclass(frozen=True)
class ReaderItem:
    """One item as one reader sees it: sides resolved, images by the reader's aliases."""

    id: str
    kind: str  # "pair" | "single"
    aliases: tuple[str, ...]  # left[, right]
    images: tuple[str, ...]  # image names in the same order as aliases
    methods: tuple[str, ...]  # methods in the same order (never sent to the reader)


@dataclass
class Study:
    """A loaded ``study.json`` and its folder."""

    root: Path
    data: dict[str, Any]

    @property
    def items(self) -> dict[str, dict[str, Any]]:
        return {item["id"]: item for item in self.data["items"]}

    @property
    def readers(self) -> list[str]:
        return list(self.data["readers"])

    def token(self, reader: str) -> str:
        return self.data["readers"][reader]["token"]

    def reader_for_token(self, token: str) -> str | None:
        """The reader whose token this is (constant-time comparison against every token), else None."""
        found = None
        for name, reader in self.data["readers"].items():
            if secrets.compare_digest(token.encode(), str(reader["token"]).encode()):
                found = name
        return found

    def reader_items(self, reader: str) -> list[ReaderItem]:
        """The reader's reading list in their order, with their sides."""
        plan = self.data["readers"][reader]
        items = self.items
        out = []
        for item_id in plan["order"]:
            item = items[item_id]
            images, methods = list(item["images"]), list(item["methods"])
            if plan["swapped"].get(item_id, False):
                images.reverse()
                methods.reverse()
            out.append(
                ReaderItem(item_id, item["kind"], tuple(plan["aliases"][item_id]), tuple(images), tuple(methods))
            )
        return out

    def image_shape(self, name: str) -> tuple[int, int]:
        rows, cols = self.data["images"][name]["shape"]
        return int(rows), int(cols)

    def image_path(self, name: str) -> Path:
        """The file of a listed image (``name`` must be a key of the study's images, never a client path)."""
        if name not in self.data["images"]:
            raise KeyError(name)
        return self.root / IMAGES_DIR / f"{name}{IMAGE_SUFFIX}"

    def load_pixels(self, name: str) -> np.ndarray:
        return np.fromfile(self.image_path(name), dtype="<f4").reshape(self.image_shape(name))


def parse_pairs(texts: Sequence[str]) -> list[tuple[str, str]]:
    """``["rgancs:cs_tv", ...]`` -> method pairs."""
    pairs = []
    for text in texts:
        parts = [p.strip() for p in text.split(":")]
        if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
            raise StudyInputError(f"pair {text!r} is not METHOD_A:METHOD_B with two different methods")
        pairs.append((parts[0], parts[1]))
    return pairs


def create_study(
    study_dir: str | Path,
    sources: Sequence[str | Path],
    *,
    readers: Sequence[str] = ("reader1",),
    pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS,
    single: bool = False,
    slices_per_exam: int | None = None,
    seed: int | None = None,
) -> Study:
    """Collect the images, build the reading list and write the study folder (which must be new or empty).

    Pairs whose methods are not both present are left out; ``single`` adds one item per image of a paired
    method, scored alone; ``slices_per_exam`` keeps that many evenly spaced slices of each exam.

    Raises:
        StudyInputError: bad reader names, unreadable sources, or no pair with both methods on one slice.
        StudyExistsError: ``study_dir`` is not empty.
    """
    from .store import AnswerStore

    study_dir = Path(study_dir)
    names = _check_readers(readers)
    if study_dir.exists() and (not study_dir.is_dir() or any(study_dir.iterdir())):
        raise StudyExistsError(f"{study_dir} is not an empty folder; choose a new study folder")
    if slices_per_exam is not None and slices_per_exam < 1:
        raise StudyInputError("slices per exam must be at least 1")
    images = collect_images(sources)
    groups = _group(images)
    methods = sorted({image.method for image in images})
    usable = [pair for pair in dict.fromkeys(tuple(p) for p in pairs) if set(pair) <= set(methods)]
    if not usable:
        wanted = ", ".join(f"{a}:{b}" for a, b in pairs)
        raise StudyInputError(f"no pair ({wanted}) has both methods in the inputs; methods found: {', '.join(methods)}")
    seed = secrets.randbits(63) if seed is None else int(seed)
    rng = random.Random(seed)

    study_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(study_dir, 0o700)
    (study_dir / IMAGES_DIR).mkdir()
    stored: dict[tuple, str] = {}
    image_table: dict[str, dict[str, Any]] = {}

    def store(image: SourceImage) -> str:
        key = (image.method, image.exam, image.slice_key)
        if key not in stored:
            name = secrets.token_hex(16)
            top = float(np.percentile(image.pixels, NORMALISE_PERCENTILE)) or 1.0
            (image.pixels / top).astype("<f4").tofile(study_dir / IMAGES_DIR / f"{name}{IMAGE_SUFFIX}")
            image_table[name] = {
                "method": image.method,
                "exam": image.exam,
                "slice": list(image.slice_key),
                "shape": list(image.pixels.shape),
                "scale": top,
                "source": image.source,
            }
            stored[key] = name
        return stored[key]

    items: list[dict[str, Any]] = []
    for (exam, slice_key), by_method in _pick_slices(groups, usable, slices_per_exam):
        for a, b in usable:
            if a in by_method and b in by_method:
                items.append(_item("pair", [a, b], [store(by_method[a]), store(by_method[b])], exam, slice_key))
        if single:
            for method in sorted({m for pair in usable for m in pair} & set(by_method)):
                items.append(_item("single", [method], [store(by_method[method])], exam, slice_key))
    if not items:
        raise StudyInputError("no slice has both methods of any pair (do exam and slice positions match?)")
    rng.shuffle(items)  # the stored list order tells nothing about the pairs either

    data = {
        "format": STUDY_FORMAT,
        "version": STUDY_VERSION,
        "study_id": secrets.token_hex(8),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "rubric": RUBRIC,
        "scale": {str(k): v for k, v in SCALE.items()},
        "pairs": [list(p) for p in usable],
        "sources": [str(s) for s in sources],
        "images": image_table,
        "items": items,
        "readers": {name: _reader_plan(items, rng) for name in names},
    }
    study = Study(study_dir, data)
    write_study_file(study)
    AnswerStore.create(study)
    logger.info("study %s: %d items, %d images, readers %s", study_dir, len(items), len(image_table), names)
    return study


def _check_readers(readers: Sequence[str]) -> list[str]:
    names = [r.strip() for text in readers for r in str(text).split(",") if r.strip()]
    if not names:
        raise StudyInputError("name at least one reader")
    for name in names:
        if not _READER_NAME.fullmatch(name):
            raise StudyInputError(f"reader name {name!r}: use 1 to 40 letters, digits, '.', '_' or '-'")
    if len(set(names)) != len(names):
        raise StudyInputError(f"reader names repeat: {', '.join(names)}")
    return names


def _group(images: Sequence[SourceImage]) -> dict[tuple[str, tuple], dict[str, SourceImage]]:
    groups: dict[tuple[str, tuple], dict[str, SourceImage]] = {}
    for image in images:
        groups.setdefault((image.exam, image.slice_key), {})[image.method] = image
    return groups


def _pick_slices(
    groups: dict[tuple[str, tuple], dict[str, SourceImage]], pairs: Sequence[tuple[str, str]], per_exam: int | None
) -> list[tuple[tuple[str, tuple], dict[str, SourceImage]]]:
    """Slices with at least one complete pair; at most ``per_exam`` evenly spaced ones per exam."""
    by_exam: dict[str, list[tuple]] = {}
    for (exam, key), by_method in sorted(groups.items()):
        if any(a in by_method and b in by_method for a, b in pairs):
            by_exam.setdefault(exam, []).append(key)
    picked = []
    for exam, keys in by_exam.items():
        if per_exam is not None and len(keys) > per_exam:
            keys = [keys[int(i)] for i in np.linspace(0, len(keys) - 1, per_exam).round()]
        picked.extend(((exam, key), groups[(exam, key)]) for key in keys)
    return picked


def _item(kind: str, methods: list[str], images: list[str], exam: str, slice_key: tuple) -> dict[str, Any]:
    return {
        "id": secrets.token_hex(6),
        "kind": kind,
        "methods": methods,
        "images": images,
        "exam": exam,
        "slice": list(slice_key),
    }


def _reader_plan(items: Sequence[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    """Random order; per method pair, half the items (to within one, the odd one at random) swapped."""
    order = [item["id"] for item in items]
    rng.shuffle(order)
    swapped: dict[str, bool] = {}
    by_pair: dict[tuple[str, ...], list[str]] = {}
    for item in items:
        if item["kind"] == "pair":
            by_pair.setdefault(tuple(item["methods"]), []).append(item["id"])
    for ids in by_pair.values():
        flags = [True] * (len(ids) // 2) + [False] * (len(ids) // 2)
        if len(ids) % 2:
            flags.append(rng.random() < 0.5)
        rng.shuffle(flags)
        swapped.update(zip(ids, flags, strict=True))
    aliases = {item["id"]: [secrets.token_hex(12) for _ in item["images"]] for item in items}
    return {"token": secrets.token_urlsafe(24), "order": order, "swapped": swapped, "aliases": aliases}


def write_study_file(study: Study) -> Path:
    """Write ``study.json`` atomically, readable by its owner only (it holds the tokens and the key)."""
    path = study.root / STUDY_FILE
    tmp = path.with_name(f".{STUDY_FILE}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(study.data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_study(study_dir: str | Path) -> Study:
    """Read and check ``study.json``.

    Raises:
        StudyFormatError: no study file, not JSON, not a reader study, or missing parts.
        StudyVersionError: written by an older or newer version of this tool.
    """
    root = Path(study_dir)
    path = root / STUDY_FILE
    if not path.is_file():
        raise StudyFormatError(
            f"{root} is not a reader-study folder ({STUDY_FILE} is missing); make one with review new"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudyFormatError(f"{path} cannot be read as JSON, it is corrupt ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != STUDY_FORMAT:
        raise StudyFormatError(f"{path} is not a reader-study file of this tool")
    version = data.get("version")
    if not isinstance(version, int) or version != STUDY_VERSION:
        age = "an older" if isinstance(version, int) and version < STUDY_VERSION else "a newer or unknown"
        raise StudyVersionError(
            f"{root} was made by {age} version of the review tool (study format {version!r}, this tool reads "
            f"{STUDY_VERSION}); use the matching version, or build the study again with review new"
        )
    missing = [k for k in ("study_id", "images", "items", "readers", "rubric") if k not in data]
    if missing:
        raise StudyFormatError(f"{path} lacks {', '.join(missing)}; the study file is damaged")
    return Study(root, data)
