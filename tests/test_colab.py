"""ichlab.colab: Drive mounting for data and checkpoints, and the GPU check with advice.

Colab's own ``google.colab.drive`` module exists only on Colab. The on-Colab tests install a
stand-in whose ``mount`` creates ``MyDrive`` under a temporary mount point, as Colab does.
"""

from __future__ import annotations

import logging
import os
import sys
import types
from pathlib import Path

import pytest

from ichlab import colab
from ichlab.config import DATA_HOME_VARIABLE, get_config

needs_no_gpu = pytest.mark.skipif(colab.gpu_available(), reason="a GPU is attached, so there is no advice to check")


@pytest.fixture
def off_colab(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)


@pytest.fixture
def on_colab(monkeypatch, tmp_path) -> list[str]:
    """Pretend to run on Colab; returns the list of mount points that ``drive.mount`` received."""
    mounted: list[str] = []

    def mount(mount_point: str) -> None:
        mounted.append(mount_point)
        (Path(mount_point) / "MyDrive").mkdir(parents=True, exist_ok=True)

    google = types.ModuleType("google")
    google_colab = types.ModuleType("google.colab")
    google_colab.drive = types.SimpleNamespace(mount=mount)
    google.colab = google_colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google_colab)
    monkeypatch.setenv("COLAB_RELEASE_TAG", "test")
    monkeypatch.delenv(DATA_HOME_VARIABLE, raising=False)
    return mounted


def test_mount_drive_off_colab_changes_nothing(off_colab, monkeypatch):
    monkeypatch.setenv(DATA_HOME_VARIABLE, "/data/elsewhere")

    assert colab.mount_drive() is None

    assert os.environ[DATA_HOME_VARIABLE] == "/data/elsewhere"


def test_mount_drive_on_colab_sets_data_home(on_colab, tmp_path):
    mount_point = tmp_path / "drive"

    data_home = colab.mount_drive("course/ichlab-data", mount_point=mount_point)

    assert on_colab == [str(mount_point)]
    assert data_home == mount_point / "MyDrive" / "course" / "ichlab-data"
    assert data_home.is_dir()
    assert os.environ[DATA_HOME_VARIABLE] == str(data_home)


def test_config_after_mount_uses_drive(on_colab, tmp_path):
    data_home = colab.mount_drive(mount_point=tmp_path / "drive")

    config = get_config("demo")

    assert config.data.root.is_relative_to(data_home)
    assert config.data.cache_dir.is_relative_to(data_home)
    assert config.runs_dir.is_relative_to(data_home)


@pytest.mark.parametrize("folder", ["/content/data", "../outside", "a/../../b", ""])
def test_mount_drive_rejects_folder_outside_mydrive(on_colab, folder):
    with pytest.raises(ValueError, match="relative path inside MyDrive"):
        colab.mount_drive(folder)

    assert on_colab == []


@needs_no_gpu
def test_gpu_advice_on_colab_names_runtime_menu(on_colab):
    advice = colab.gpu_advice("demo")

    assert "Runtime > Change runtime type" in advice


@needs_no_gpu
def test_gpu_advice_full_mode_offers_demo(off_colab):
    advice = colab.gpu_advice("full")

    assert "ICHLAB_MODE=demo" in advice


@needs_no_gpu
@pytest.mark.parametrize("mode", ["quick", "demo"])
def test_gpu_advice_cpu_modes_need_no_gpu(off_colab, mode):
    advice = colab.gpu_advice(mode)

    assert f"{mode} mode is sized for a CPU" in advice


@needs_no_gpu
def test_check_gpu_warns_without_gpu(off_colab, caplog):
    with caplog.at_level(logging.WARNING, logger="ichlab.colab"):
        attached = colab.check_gpu("full")

    assert attached is False
    assert any("No GPU found" in record.getMessage() for record in caplog.records)


@pytest.mark.skipif(not colab.gpu_available(), reason="no GPU attached here")
def test_gpu_advice_none_with_gpu():
    assert colab.gpu_advice("full") is None
