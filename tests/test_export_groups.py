"""``recon-plugin export --group``: the only image group, the newest date-time group ``client`` wrote, a named
group, and a named error listing the groups when the choice is ambiguous (before: LookupError traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_dicom_export import images_for
from typer.testing import CliRunner

from recon_plugin.cli import app
from recon_plugin.errors import ImageGroupError
from recon_plugin.images import SERIES_INDEX
from recon_plugin.mrd_client import write_output
from recon_plugin.replay.dataset import image_groups, pick_image_group, read_images

runner = CliRunner()
SERIES = SERIES_INDEX["rgancs"]


def add_group(path: Path, group: str, count: int) -> None:
    write_output(path, {SERIES: images_for("rgancs", count=count)}, b"", group)


def export(path: Path, out: Path, *args: str):
    return runner.invoke(app, ["export", str(path), "--dicom", str(out), *args])


def test_only_group_is_picked_and_exported(tmp_path):
    path = tmp_path / "client.h5"
    add_group(path, "2026-12-03 10:15:00.123456", 3)
    assert image_groups(path) == ["2026-12-03 10:15:00.123456"]
    res = export(path, tmp_path / "dicom")
    assert res.exit_code == 0, res.output
    assert "image group '2026-12-03 10:15:00.123456'" in res.output and "3 DICOM files" in res.output


def test_newest_date_time_group_by_default_and_any_group_by_name(tmp_path):
    path = tmp_path / "client.h5"
    add_group(path, "2026-12-03 10:15:00.123456", 2)
    add_group(path, "2026-12-03 11:00:00.000001", 4)
    add_group(path, "2026-12-02 23:59:59.999999", 3)
    assert pick_image_group(path) == "2026-12-03 11:00:00.000001"
    res = export(path, tmp_path / "newest")
    assert res.exit_code == 0 and "4 DICOM files" in res.output, res.output
    res = export(path, tmp_path / "named", "--group", "2026-12-02 23:59:59.999999")
    assert res.exit_code == 0 and "3 DICOM files" in res.output, res.output


def test_ambiguous_or_missing_group_lists_the_groups(tmp_path):
    path = tmp_path / "runs.h5"
    add_group(path, "rgancs_run", 2)
    add_group(path, "cs_run", 2)
    res = export(path, tmp_path / "dicom")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "ImageGroupError" in res.output and "'cs_run', 'rgancs_run'" in res.output and "--group" in res.output
    res = export(path, tmp_path / "dicom", "--group", "dataset")
    assert res.exit_code == 2 and "has no image group 'dataset'" in res.output and "'cs_run'" in res.output
    assert not (tmp_path / "dicom").exists()
    with pytest.raises(ImageGroupError, match="no image group 'dataset'"):
        read_images(path)  # the library too: a named error, not ismrmrd's LookupError


def test_missing_file_is_named(tmp_path):
    res = export(tmp_path / "nothing.h5", tmp_path / "dicom")
    assert res.exit_code == 2 and "no such file" in res.output and "Traceback" not in res.output
