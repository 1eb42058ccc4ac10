"""Reader study builder: grouping, blinding, randomisation balance, study/database versions and corruption."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from review_helpers import METHODS, slice_pixels, write_exam

from recon_plugin.dicom_export import write_dicom_series
from recon_plugin.replay.dataset import read_images
from recon_plugin.review.errors import (
    CorruptDatabaseError,
    StudyExistsError,
    StudyFormatError,
    StudyInputError,
    StudyVersionError,
)
from recon_plugin.review.store import AnswerStore
from recon_plugin.review.study import DB_FILE, IMAGES_DIR, STUDY_FILE, create_study, load_study, parse_pairs

PAIRS = {("rgancs", "cs_wavelet"), ("rgancs", "cs_tv"), ("rgancs", "zero_filled")}


@pytest.fixture
def exam(tmp_path) -> Path:
    return write_exam(tmp_path / "exam.h5")


def test_groups_same_exam_and_slice_into_default_pairs(tmp_path, exam):
    study = create_study(tmp_path / "s", [exam], seed=3)
    items = study.data["items"]
    assert len(items) == 4 * 3  # 4 slices x 3 pairs
    assert {tuple(i["methods"]) for i in items} == PAIRS
    assert Counter(tuple(i["methods"]) for i in items) == dict.fromkeys(PAIRS, 4)
    for item in items:
        a, b = (study.data["images"][name] for name in item["images"])
        assert [a["method"], b["method"]] == item["methods"]
        assert a["exam"] == b["exam"] == "7" and a["slice"] == b["slice"] == item["slice"]
    assert len({tuple(i["slice"]) for i in items}) == 4


def test_methods_in_separate_files_and_slice_subset(tmp_path):
    cs = write_exam(tmp_path / "cs.h5", methods=("cs_wavelet", "cs_tv"), slices=5)
    net = write_exam(tmp_path / "net.h5", methods=("rgancs",), slices=5)
    study = create_study(tmp_path / "s", [net, cs], slices_per_exam=2, seed=0)
    items = study.data["items"]
    assert Counter(tuple(i["methods"]) for i in items) == {("rgancs", "cs_wavelet"): 2, ("rgancs", "cs_tv"): 2}
    assert {i["slice"][0] for i in items} == {1, 5}  # first and last image index: evenly spaced


def test_dicom_folder_gives_the_same_groups_and_pixels(tmp_path, exam):
    write_dicom_series(read_images(exam), tmp_path / "dicom")
    study = create_study(tmp_path / "s", [tmp_path / "dicom"], seed=0)
    items = study.data["items"]
    assert Counter(tuple(i["methods"]) for i in items) == dict.fromkeys(PAIRS, 4)
    h5_study = create_study(tmp_path / "s2", [exam], seed=0)
    assert sorted(tuple(i["slice"]) for i in items) == sorted(tuple(i["slice"]) for i in h5_study.data["items"])
    for name, info in study.data["images"].items():  # same picture (up to uint16 quantisation) after normalising
        original = np.abs(slice_pixels(info["slice"][0] - 1, info["method"]))
        expected = original / np.percentile(original, 99.5)
        assert np.allclose(study.load_pixels(name), expected, atol=2e-3)


def test_single_image_items(tmp_path, exam):
    study = create_study(tmp_path / "s", [exam], single=True, seed=0)
    singles = [i for i in study.data["items"] if i["kind"] == "single"]
    assert len(singles) == 4 * 4  # every paired method (zero-filled, RGANCS, CS-WV, CS-TV) of 4 slices
    assert all(len(i["images"]) == 1 for i in singles)


def test_images_are_normalised_and_named_opaquely(tmp_path, exam):
    study = create_study(tmp_path / "s", [exam], readers=["a", "b"], seed=0)
    files = sorted((tmp_path / "s" / IMAGES_DIR).iterdir())
    assert len(files) == 4 * 4
    for file in files:
        assert len(file.stem) == 32 and all(c in "0123456789abcdef" for c in file.stem)
        assert not any(m in file.name for m in METHODS)
    for name in study.data["images"]:
        assert np.percentile(study.load_pixels(name), 99.5) == pytest.approx(1.0, rel=1e-5)
    aliases = [set(a for v in study.data["readers"][r]["aliases"].values() for a in v) for r in ("a", "b")]
    assert not aliases[0] & aliases[1] and not aliases[0] & set(study.data["images"])
    assert oct(os.stat(tmp_path / "s" / STUDY_FILE).st_mode & 0o777) == "0o600"


def test_randomisation_is_balanced_per_reader_and_pair(tmp_path):
    exam = write_exam(tmp_path / "e.h5", slices=9)
    readers = [f"r{i}" for i in range(12)]
    study = create_study(tmp_path / "s", [exam], readers=readers, seed=5)
    ids = [i["id"] for i in study.data["items"]]
    orders = []
    left_counts: Counter = Counter()
    for reader in readers:
        plan = study.data["readers"][reader]
        assert sorted(plan["order"]) == sorted(ids)  # a permutation of the whole list
        orders.append(tuple(plan["order"]))
        for pair in PAIRS:  # 9 items per pair: each method on the left 4 or 5 times
            swapped = [plan["swapped"][i["id"]] for i in study.data["items"] if tuple(i["methods"]) == pair]
            assert sorted([sum(swapped), len(swapped) - sum(swapped)]) == [4, 5]
        for item in study.reader_items(reader):
            left_counts[item.methods[0]] += 1
    assert len(set(orders)) == len(readers)  # every reader has their own order
    assert len({study.data["readers"][r]["token"] for r in readers}) == len(readers)
    # RGANCS is in every pair: on the left in about half of its 27 items per reader
    assert abs(left_counts["rgancs"] / (27 * 12) - 0.5) < 0.05


def test_seed_reproduces_order_and_sides(tmp_path, exam):
    def plan(folder: str) -> list:
        study = create_study(tmp_path / folder, [exam], readers=["a"], seed=11)
        return [(it.methods, study.items[it.id]["slice"]) for it in study.reader_items("a")]

    assert plan("one") == plan("two")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"readers": ["bad name"]}, "reader name"),
        ({"readers": ["a", "a"]}, "repeat"),
        ({"readers": []}, "at least one reader"),
        ({"pairs": [("rgancs", "unknown")]}, "methods found"),
        ({"slices_per_exam": 0}, "at least 1"),
    ],
)
def test_bad_options(tmp_path, exam, kwargs, match):
    with pytest.raises(StudyInputError, match=match):
        create_study(tmp_path / "s", [exam], **kwargs)


def test_bad_inputs(tmp_path, exam):
    with pytest.raises(StudyInputError, match="does not exist"):
        create_study(tmp_path / "s", [tmp_path / "missing.h5"])
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(StudyInputError, match="cannot be read"):
        create_study(tmp_path / "s", [tmp_path / "junk.h5"])
    with pytest.raises(StudyInputError, match="give each reconstruction once"):
        create_study(tmp_path / "s", [exam, exam])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(StudyExistsError):
        create_study(tmp_path / "full", [exam])
    with pytest.raises(StudyInputError, match="METHOD_A:METHOD_B"):
        parse_pairs(["rgancs"])
    assert parse_pairs(["rgancs:cs_tv"]) == [("rgancs", "cs_tv")]


def _edit_study(folder: Path, **changes) -> None:
    data = json.loads((folder / STUDY_FILE).read_text())
    data.update(changes)
    (folder / STUDY_FILE).write_text(json.dumps(data))


def test_study_versions_and_corrupt_files(tmp_path, exam):
    folder = tmp_path / "s"
    create_study(folder, [exam], seed=0)
    assert load_study(folder).data["version"] == 1
    _edit_study(folder, version=0)
    with pytest.raises(StudyVersionError, match="older version"):
        load_study(folder)
    _edit_study(folder, version=2)
    with pytest.raises(StudyVersionError, match="newer"):
        load_study(folder)
    (folder / STUDY_FILE).write_text("{ truncated")
    with pytest.raises(StudyFormatError, match="corrupt"):
        load_study(folder)
    with pytest.raises(StudyFormatError, match="missing"):
        load_study(tmp_path)


def test_database_corruption_version_and_ownership(tmp_path, exam):
    folder = tmp_path / "s"
    study = create_study(folder, [exam], seed=0)
    db = folder / DB_FILE
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", ("0", "schema_version"))
    with pytest.raises(StudyVersionError, match="older version"):
        AnswerStore(study)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", ("1", "schema_version"))
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", ("someone-else", "study_id"))
    with pytest.raises(CorruptDatabaseError, match="another study"):
        AnswerStore(study)
    for suffix in ("-wal", "-shm"):
        (folder / f"{DB_FILE}{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"garbage, not SQLite" * 100)
    with pytest.raises(CorruptDatabaseError, match="corrupt"):
        AnswerStore(study)
    db.unlink()
    with pytest.raises(CorruptDatabaseError, match="missing"):
        AnswerStore(study)


def test_answers_survive_a_killed_process(tmp_path, exam):
    folder = tmp_path / "s"
    study = create_study(folder, [exam], readers=["a"], seed=0)
    item = study.data["readers"]["a"]["order"][0]
    code = textwrap.dedent(f"""
        import sys, time
        from recon_plugin.review.store import AnswerStore
        from recon_plugin.review.study import load_study
        store = AnswerStore(load_study({str(folder)!r}))
        store.save("a", {item!r}, {{"preference": "left", "left_quality": 4}})
        print("saved", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saved"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    rows = AnswerStore(load_study(folder)).answers()
    assert rows[("a", item)]["preference"] == "left" and rows[("a", item)]["left_quality"] == 4


def test_upsert_never_duplicates(tmp_path, exam):
    study = create_study(tmp_path / "s", [exam], readers=["a"], seed=0)
    store = AnswerStore(study)
    item = study.data["items"][0]["id"]
    store.save("a", item, {"preference": "left"})
    store.save("a", item, {"preference": "right", "right_blurring": 2})
    rows = store.answers()
    assert list(rows) == [("a", item)]
    assert rows[("a", item)]["preference"] == "right" and rows[("a", item)]["right_blurring"] == 2
    with sqlite3.connect(tmp_path / "s" / DB_FILE) as conn:
        assert conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 1
