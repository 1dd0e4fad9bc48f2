"""The DICOM notebook in a real browser: JupyterLab on 127.0.0.1, run in headless Chromium.

The test opens ``notebooks/01_dicom_and_windowing.ipynb`` in JupyterLab, clears its stored
outputs and runs all cells from the page. It checks that the slice viewer's slider rendered,
that a key press moves it and the kernel redraws the slice, and saves a screenshot. The machinery is in ``tests/browser/lab_in_chromium.py``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BROWSER_HELPERS = Path(__file__).resolve().parent / "browser"
DICOM_NOTEBOOK = REPO_ROOT / "notebooks" / "01_dicom_and_windowing.ipynb"
# Seconds for the whole browser run. With up to 20 s to stop both processes, the test ends within three minutes.
RUN_TIMEOUT = 150.0
# When set, the screenshot and page HTML are also copied into this folder (for CI artefacts).
SCREENSHOT_DIR_VARIABLE = "ICHLAB_SCREENSHOT_DIR"

sys.path.insert(0, str(BROWSER_HELPERS))
import lab_in_chromium  # noqa: E402


STAND_IN_VIEWER = """\
import numpy as np
from ichlab import widgets

# (N, H, W): four 32 x 32 slices with HU from air to bone
volume_hu = np.linspace(-1000, 1000, 4 * 32 * 32, dtype=np.float32).reshape(4, 32, 32)
widgets.slice_viewer(volume_hu, title="stand-in series")"""
STAND_IN_SLIDER = """\
import ipywidgets

ipywidgets.IntSlider(value=3, min=0, max=9, description="slice")"""


def _slider_stand_in(folder: Path) -> Path:
    """Write a one-cell notebook that shows a slice slider, used while the DICOM notebook does not exist.

    The cell shows ``ichlab.widgets.slice_viewer`` on a tiny made-up volume when that module
    exists, else a plain ipywidgets IntSlider.
    """
    try:
        from ichlab import widgets
    except ImportError:
        widgets = None
    source = STAND_IN_VIEWER if hasattr(widgets, "slice_viewer") else STAND_IN_SLIDER
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(source)]
    path = folder / "slider_stand_in.ipynb"
    nbformat.write(notebook, path)
    return path


@pytest.fixture
def chromium() -> Path:
    """Return Debian's Chromium, or skip with the command that installs it."""
    if not lab_in_chromium.CHROMIUM.is_file():
        pytest.skip(
            f"{lab_in_chromium.CHROMIUM} not found: install Debian's chromium "
            "(apt-get install -y chromium) to run the JupyterLab browser check"
        )
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed; install the test extra: pip install -e '.[test]'")
    pytest.importorskip("websocket", reason="websocket-client is not installed; it comes with jupyter_server")
    return lab_in_chromium.CHROMIUM


@pytest.mark.slow
def test_dicom_notebook_slider_renders_in_jupyterlab(chromium, tmp_path):
    if DICOM_NOTEBOOK.is_file():
        notebook = DICOM_NOTEBOOK
    else:
        notebook = _slider_stand_in(tmp_path)

    run = lab_in_chromium.run_notebook_in_lab(notebook, tmp_path / "lab", timeout=RUN_TIMEOUT)
    print(f"screenshot of {run.notebook}: {run.screenshot}")
    copy_dir = os.environ.get(SCREENSHOT_DIR_VARIABLE)
    if copy_dir:
        Path(copy_dir).mkdir(parents=True, exist_ok=True)
        print(f"copied to {shutil.copy2(run.screenshot, copy_dir)}")
        shutil.copy2(run.html_file, copy_dir)

    assert run.errors == [], f"cells raised in JupyterLab: {run.errors}"
    assert run.executed_cells == run.code_cells, f"only {run.executed_cells} of {run.code_cells} code cells ran"
    assert run.slider_count >= 1, f"no widget slider in the page; see {run.html_file}"
    assert "jp-OutputArea" in run.html
    assert "widget-slider" in run.html
    assert run.slider_box is not None
    assert run.slider_box["width"] > 0, f"slider has no width: {run.slider_box}"
    assert run.slider_box["height"] > 0, f"slider has no height: {run.slider_box}"
    assert run.screenshot.read_bytes().startswith(b"\x89PNG"), f"{run.screenshot} is not a PNG"

    # One right-arrow key press on the slider handle moves it one step, and the kernel redraws
    # the viewer's slice when the output shows one.
    assert run.slider_move is not None
    assert int(run.slider_move["readout_after"]) == int(run.slider_move["readout_before"]) + 1
    if run.slider_move["has_image"]:
        assert run.slider_move["image_redrawn"]
