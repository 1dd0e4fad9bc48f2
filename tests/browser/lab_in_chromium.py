"""Run a notebook in JupyterLab inside headless Chromium and report what the page rendered.

The notebook is copied into a scratch folder, so JupyterLab's autosave never touches the
original. JupyterLab starts on 127.0.0.1 with a token, and headless Chromium opens the copy.
Over the Chrome DevTools Protocol the page's ``window.jupyterapp`` clears the stored outputs and
runs all cells with JupyterLab's own "run all" command. When every cell has run and a widget
slider is on the page, a screenshot and the page's HTML are saved. Both processes are stopped
by their process ids whatever happens, and every wait has a timeout.

Used by ``tests/test_browser.py``, and runnable by hand from the repository root::

    .venv/bin/python tests/browser/lab_in_chromium.py notebooks/01_dicom_and_windowing.ipynb --out /tmp/lab-check
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

from cdp_client import DevTools, connect_devtools, get_json

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # Chromium refuses to start as root with its sandbox on
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--window-size=1400,1000",
)
# CSS selector of an ipywidgets IntSlider or FloatSlider that JupyterLab rendered in an output.
SLIDER_SELECTOR = ".jp-OutputArea-output .widget-slider"
WINDOW_SIZE = (1400, 1000)

# JupyterLab user settings: no news or update checks (they would fetch from the internet and
# show a pop-up over the notebook), and every cell in the DOM, not only those scrolled into view.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}
LAB_SERVER_CONFIG = {
    "LabApp": {
        "news_url": None,
        "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate",
        "expose_app_in_browser": True,
    },
}

# JavaScript run in the page. Each expression returns plain JSON values.
JS_NOTEBOOK_STATE = """
(() => {
  const app = window.jupyterapp;
  if (!app) return {phase: "loading JupyterLab"};
  const panel = app.shell.currentWidget;
  if (!panel || !panel.sessionContext || !panel.content || !panel.content.model) return {phase: "opening the notebook"};
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  if (!kernel) return {phase: "starting the kernel"};
  const cells = panel.content.model.cells;
  let codeCells = 0, executed = 0;
  const errors = [];
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== "code") continue;
    codeCells += 1;
    if (cell.executionCount !== null && cell.executionCount !== undefined) executed += 1;
    for (let j = 0; j < cell.outputs.length; j++) {
      const output = cell.outputs.get(j).toJSON();
      if (output.output_type === "error") errors.push(`cell ${i}: ${output.ename}: ${output.evalue}`);
    }
  }
  const running = Array.from(document.querySelectorAll(".jp-InputPrompt")).filter(p => p.textContent.includes("*")).length;
  return {
    phase: "ready",
    kernel: kernel.status,
    path: panel.context.path,
    codeCells: codeCells,
    executed: executed,
    running: running,
    errors: errors,
    sliders: document.querySelectorAll(%(selector)s).length,
  };
})()
""" % {"selector": json.dumps(SLIDER_SELECTOR)}

JS_CLEAR_AND_RUN_ALL = """
(async () => {
  const app = window.jupyterapp;
  await app.commands.execute("notebook:clear-all-cell-outputs");
  app.commands.execute("notebook:run-all-cells");
  return true;
})()
"""

# The first slider's readout and, when its output area also shows an image (the slice viewer's
# figure), that image's source, so a change after a key press shows the kernel redrew it.
JS_SLIDER_VIEW = """
(() => {
  const slider = document.querySelector(%(selector)s);
  if (!slider) return null;
  const readout = slider.querySelector(".widget-readout");
  const area = slider.closest(".jp-OutputArea-output");
  const image = area ? area.querySelector("img") : null;
  return {readout: readout ? readout.textContent.trim() : null, image: image ? image.src : null};
})()
""" % {"selector": json.dumps(SLIDER_SELECTOR)}

JS_FOCUS_SLIDER_HANDLE = """
(() => {
  const handle = document.querySelector(%(selector)s);
  if (!handle) return false;
  handle.focus();
  return document.activeElement === handle;
})()
""" % {"selector": json.dumps(SLIDER_SELECTOR + " .noUi-handle")}

JS_SCROLL_TO_SLIDER = """
(() => {
  const slider = document.querySelector(%(selector)s);
  if (!slider) return null;
  slider.scrollIntoView({block: "center"});
  const box = slider.getBoundingClientRect();
  return {left: box.left, top: box.top, width: box.width, height: box.height};
})()
""" % {"selector": json.dumps(SLIDER_SELECTOR)}


class StepTimeout(TimeoutError):
    """Raised when one step of the browser run does not finish before the run's deadline."""


@dataclass
class Deadline:
    """A wall-clock limit shared by every wait of one run, in seconds from now."""

    seconds: float
    start: float = field(default_factory=time.monotonic)

    def remaining(self, step: str) -> float:
        left = self.seconds - (time.monotonic() - self.start)
        if left <= 0:
            raise StepTimeout(f"timed out after {self.seconds:.0f} s while {step}")
        return left


@dataclass
class LabRun:
    """What one JupyterLab run in Chromium produced."""

    notebook: str
    code_cells: int
    executed_cells: int
    errors: list[str]
    slider_count: int
    slider_box: dict | None  # left, top, width, height in CSS pixels after scrolling it into view
    slider_move: dict | None  # readout before and after one right-arrow key press, and whether the image was redrawn
    html: str
    screenshot: Path | None
    html_file: Path
    server_log: Path
    seconds: float


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _write_lab_settings(work_dir: Path) -> tuple[Path, Path]:
    settings_dir = work_dir / "lab-user-settings"
    for relative, values in LAB_SETTINGS.items():
        path = settings_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    config_dir = work_dir / "jupyter-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "jupyter_server_config.json").write_text(json.dumps(LAB_SERVER_CONFIG))
    return settings_dir, config_dir


def start_jupyterlab(notebook_dir: Path, work_dir: Path, port: int, token: str, log_file: Path) -> subprocess.Popen:
    """Start JupyterLab on 127.0.0.1:``port`` serving ``notebook_dir``, with its own config and settings folders."""
    settings_dir, config_dir = _write_lab_settings(work_dir)
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={notebook_dir}",
        f"--LabApp.user_settings_dir={settings_dir}",
        f"--LabApp.workspaces_dir={work_dir / 'lab-workspaces'}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    environment = dict(os.environ)
    environment["JUPYTER_CONFIG_DIR"] = str(config_dir)
    environment["JUPYTER_RUNTIME_DIR"] = str(work_dir / "jupyter-runtime")
    environment["JUPYTER_DATA_DIR"] = str(work_dir / "jupyter-data")  # the notebook-signing key goes here
    # A kernel started with MPLBACKEND=Agg shows figures as "<Figure size ...>" text; without it,
    # ipykernel selects the inline backend, as on a student's machine.
    environment.pop("MPLBACKEND", None)
    log = log_file.open("w")
    try:
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=notebook_dir,
            start_new_session=True,  # its kernels share its process group, so stop_process reaches them
        )
    finally:
        log.close()


def wait_for_jupyterlab(process: subprocess.Popen, base_url: str, token: str, deadline: Deadline, log_file: Path) -> None:
    """Wait until the server responds to ``/api/status``, and raise if it exits or the deadline passes."""
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {process.returncode}:\n{log_file.read_text()[-3000:]}")
        try:
            get_json(f"{base_url}/api/status?token={token}", timeout=min(5.0, deadline.remaining("starting JupyterLab")))
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)


def start_chromium(url: str, profile_dir: Path, log_file: Path) -> subprocess.Popen:
    """Start headless Chromium on ``url`` with a DevTools port chosen by Chromium itself."""
    command = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "--remote-debugging-port=0", url]
    log = log_file.open("w")
    try:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def stop_process(process: subprocess.Popen | None, grace_seconds: float = 5.0) -> None:
    """Stop a process started here by its id: SIGTERM, then SIGKILL to its process group after ``grace_seconds``."""
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            pass
    # Children (kernels, Chromium's renderers) live in the group that start_new_session created
    # with the process's own id as group id.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        pass


def _wait_for_state(devtools: DevTools, deadline: Deadline, step: str, done) -> dict:
    state: dict = {}
    while True:
        left = deadline.remaining(f"{step} (last page state: {state})")
        try:
            state = devtools.evaluate(JS_NOTEBOOK_STATE, timeout=min(20.0, left)) or {}
        except RuntimeError as error:
            state = {"phase": f"page not ready: {error}"}
        if done(state):
            return state
        time.sleep(0.5)


def press_slider_right(devtools: DevTools, deadline: Deadline) -> dict:
    """Focus the first slider's handle, press the right arrow key, and wait for the page to follow.

    Returns the readout and image source before and after the key press. When the output area
    shows an image, the wait also covers the kernel's redraw of that image.
    """
    before = devtools.evaluate(JS_SLIDER_VIEW, timeout=min(10.0, deadline.remaining("reading the slider")))
    focused = devtools.evaluate(JS_FOCUS_SLIDER_HANDLE, timeout=min(10.0, deadline.remaining("focusing the slider")))
    if not focused:
        raise RuntimeError("the slider handle could not take the keyboard focus")
    for event_type in ("keyDown", "keyUp"):
        devtools.call(
            "Input.dispatchKeyEvent",
            {"type": event_type, "key": "ArrowRight", "code": "ArrowRight", "windowsVirtualKeyCode": 39},
            timeout=min(10.0, deadline.remaining("pressing the right arrow key")),
        )

    after = before
    while True:
        left = deadline.remaining(f"waiting for the slider to move (before: readout {before['readout']!r}, now {after['readout']!r})")
        after = devtools.evaluate(JS_SLIDER_VIEW, timeout=min(10.0, left))
        readout_moved = after["readout"] != before["readout"]
        image_redrawn = before["image"] is None or after["image"] != before["image"]
        if readout_moved and image_redrawn:
            return {
                "readout_before": before["readout"],
                "readout_after": after["readout"],
                "has_image": before["image"] is not None,
                "image_redrawn": image_redrawn,
            }
        time.sleep(0.3)


def run_notebook_in_lab(notebook: Path, out_dir: Path, timeout: float = 150.0) -> LabRun:
    """Open ``notebook`` in JupyterLab in headless Chromium, run all cells and capture the page.

    Parameters
    ----------
    notebook
        The notebook to run; a copy in ``out_dir/notebooks`` is what JupyterLab opens.
    out_dir
        Folder for the copy, the servers' settings and logs, ``page.html`` and ``screenshot.png``.
    timeout
        Seconds for the whole run, from starting JupyterLab to stopping both processes.

    Raises
    ------
    StepTimeout
        If a step does not finish in time; the message names the step and the last page state.
    RuntimeError
        If JupyterLab or Chromium exits early, or the page reports a JavaScript error.
    """
    if not CHROMIUM.is_file():
        raise FileNotFoundError(f"{CHROMIUM} not found; install Debian's chromium package")
    deadline = Deadline(timeout)
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook_dir = out_dir / "notebooks"
    notebook_dir.mkdir(exist_ok=True)
    shutil.copy2(notebook, notebook_dir / notebook.name)

    token = secrets.token_hex(24)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    lab_url = f"{base_url}/lab/tree/{notebook.name}"
    server_log = out_dir / "jupyterlab.log"
    html_file = out_dir / "page.html"
    screenshot = out_dir / "screenshot.png"

    server = chromium = devtools = None
    try:
        server = start_jupyterlab(notebook_dir, out_dir, port, token, server_log)
        wait_for_jupyterlab(server, base_url, token, deadline, server_log)

        profile_dir = out_dir / "chromium-profile"
        chromium = start_chromium(f"{lab_url}?token={token}", profile_dir, out_dir / "chromium.log")
        devtools = connect_devtools(chromium, profile_dir, base_url, deadline)
        devtools.call("Emulation.setDeviceMetricsOverride", {"width": WINDOW_SIZE[0], "height": WINDOW_SIZE[1], "deviceScaleFactor": 1, "mobile": False})

        _wait_for_state(
            devtools,
            deadline,
            "opening the notebook and starting its kernel",
            lambda state: state.get("phase") == "ready" and state.get("kernel") == "idle",
        )
        devtools.evaluate(JS_CLEAR_AND_RUN_ALL, timeout=min(30.0, deadline.remaining("starting the run")))
        state = _wait_for_state(
            devtools,
            deadline,
            "running all cells",
            lambda state: state.get("phase") == "ready"
            and state.get("kernel") == "idle"
            and state.get("running") == 0
            and (state.get("executed") == state.get("codeCells") or bool(state.get("errors"))),
        )
        # Widget views render a moment after their cell finished.
        if not state["errors"]:
            state = _wait_for_state(devtools, deadline, "rendering the widget slider", lambda state: state.get("sliders", 0) > 0)

        slider_box = devtools.evaluate(JS_SCROLL_TO_SLIDER, timeout=min(10.0, deadline.remaining("scrolling to the slider")))
        slider_move = press_slider_right(devtools, deadline) if state["sliders"] else None
        time.sleep(0.5)  # let the scrolled page paint before the capture
        png = devtools.call("Page.captureScreenshot", {"format": "png"}, timeout=min(30.0, deadline.remaining("taking the screenshot")))
        screenshot.write_bytes(base64.b64decode(png["data"]))
        html = devtools.evaluate("document.documentElement.outerHTML", timeout=min(30.0, deadline.remaining("reading the page")))
        html_file.write_text(html)

        return LabRun(
            notebook=notebook.name,
            code_cells=state["codeCells"],
            executed_cells=state["executed"],
            errors=state["errors"],
            slider_count=state["sliders"],
            slider_box=slider_box,
            slider_move=slider_move,
            html=html,
            screenshot=screenshot,
            html_file=html_file,
            server_log=server_log,
            seconds=time.monotonic() - deadline.start,
        )
    finally:
        if devtools is not None:
            devtools.close()
        stop_process(chromium)
        stop_process(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a notebook in JupyterLab in headless Chromium and check for a widget slider.")
    parser.add_argument("notebook", type=Path, help="the .ipynb file to run")
    parser.add_argument("--out", type=Path, required=True, help="folder for the screenshot, page HTML and logs")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds for the whole run")
    args = parser.parse_args(argv)
    run = run_notebook_in_lab(args.notebook, args.out, timeout=args.timeout)
    print(f"{run.notebook}: {run.executed_cells}/{run.code_cells} code cells ran, {len(run.errors)} errors, {run.slider_count} sliders, {run.seconds:.0f} s")
    for error in run.errors:
        print(f"  {error}")
    print(f"slider after one right-arrow key press: {run.slider_move}")
    print(f"screenshot: {run.screenshot}")
    return 0 if run.slider_count > 0 and not run.errors else 1


if __name__ == "__main__":
    sys.exit(main())
