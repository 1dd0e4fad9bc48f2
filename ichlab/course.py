"""The course's shared notebook opening: the active mode, the device, where data lives.

Every notebook calls :func:`start` right after its setup cell, so a student sees the same
facts in the same place, and the time estimates live here instead of in each notebook.
"""

from __future__ import annotations

import os
import platform
import sys

from ichlab.config import Config, get_config

# The course repository that Colab installs from and the README's badges open. The
# publishing instructor replaces it with `ichlab course set-repository URL`, which rewrites
# this line, every notebook's setup cell and the README badges together.
REPOSITORY_URL = "https://github.com/your-org/ichlab"

# The first code cell of every notebook, byte for byte; a test compares them.
SETUP_CELL = f"""\
# Setup: install ichlab where it is missing (Colab), keeping the torch that is already there.
import importlib.util
import subprocess
import sys

COURSE_REPOSITORY = "{REPOSITORY_URL}"
if importlib.util.find_spec("ichlab") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", f"git+{{COURSE_REPOSITORY}}"], check=True)"""

# The notebooks in course order, each with its rough run time in minutes:
# (quick mode on 2 CPU cores, demo mode on 2 CPU cores, full mode on one GPU).
NOTEBOOKS = {
    "00_setup": (0.2, 0.2, 0.2),
    "01_dicom_and_windowing": (0.5, 0.5, 0.5),
    "02_generated_head_ct": (0.5, 1, 1),
    "03_data_pipeline": (0.5, 2, 30),
    "04_train_2d": (1, 3, 30),
    "05_train_2_5d": (1, 4, 30),
    "06_train_lstm": (1.5, 7, 60),
    "07_evaluation": (0.5, 1, 5),
    "08_gradcam": (1, 2, 5),
}


def on_colab() -> bool:
    """Return True inside a Google Colab runtime."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def describe_device() -> str:
    """Return a one-line description of the accelerator torch will use."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        memory_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
        return f"CUDA GPU: {name} ({memory_gib:.0f} GiB)"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "Apple GPU (MPS)"
    return f"CPU only ({os.cpu_count()} cores)"


def start(notebook: str, mode: str | None = None) -> Config:
    """Print the opening facts of a notebook and return the run configuration.

    Parameters
    ----------
    notebook
        The notebook's name without extension, for example ``"04_train_2d"``.
    mode
        Overrides ``ICHLAB_MODE``; notebooks leave it unset.

    Raises
    ------
    KeyError
        If ``notebook`` is not a course notebook.
    """
    if notebook not in NOTEBOOKS:
        raise KeyError(f"{notebook!r} is not a course notebook; expected one of {', '.join(NOTEBOOKS)}")
    config = get_config(mode)
    minutes = dict(zip(("quick", "demo", "full"), NOTEBOOKS[notebook]))
    device = describe_device()

    print(f"notebook: {notebook}")
    print(f"mode: {config.mode} (set ICHLAB_MODE to quick, demo or full before starting Jupyter)")
    print(f"expected time: about {minutes[config.mode]:g} min in this mode")
    print(f"python {platform.python_version()}, {'Colab' if on_colab() else 'local'}, {device}")
    print(f"data: {config.data.source} data in {config.data.root}")
    if config.mode == "full" and device.startswith("CPU"):
        print("warning: full mode on a CPU takes hours; attach a GPU or set ICHLAB_MODE=demo")
    return config


# Packages the course imports, by import name and the pip name that installs them.
REQUIRED_PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "pydicom": "pydicom",
    "pylibjpeg": "pylibjpeg",
    "numpy": "numpy",
    "pandas": "pandas",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "ipywidgets": "ipywidgets",
    "pytorch_grad_cam": "grad-cam",
    "tqdm": "tqdm",
}


def check_environment() -> list[tuple[str, str, str]]:
    """Check that every package the course needs imports.

    Returns
    -------
    list of (package, version, status)
        ``status`` is ``"ok"`` or the pip command that installs the missing package.
    """
    import importlib
    from importlib import metadata

    rows = []
    for module_name, pip_name in REQUIRED_PACKAGES.items():
        try:
            importlib.import_module(module_name)
        except ImportError:
            rows.append((pip_name, "-", f"missing: pip install {pip_name}"))
            continue
        try:
            version = metadata.version(pip_name)
        except metadata.PackageNotFoundError:
            version = "unknown"
        rows.append((pip_name, version, "ok"))
    return rows


def advice(config: Config) -> str:
    """Return what the student should do next, given the mode and the hardware."""
    import torch

    has_gpu = torch.cuda.is_available()
    if config.mode == "full":
        if not config.data.root.is_dir():
            return (
                f"Full mode needs the RSNA subset at {config.data.root}: see data/README.md, "
                "or set ICHLAB_MODE=demo to use the generated data."
            )
        if not has_gpu:
            return "Full mode on a CPU takes many hours: attach a GPU (Colab: Runtime > Change runtime type) or use demo mode."
        return "Ready for full mode: continue with 01_dicom_and_windowing."
    if config.mode == "demo" and has_gpu:
        return "A GPU is attached: demo mode will be fast, and full mode is possible once the RSNA subset is prepared."
    if config.mode == "demo":
        return "Demo mode on a CPU: each training notebook takes a few minutes. Continue with 01_dicom_and_windowing."
    return "Quick mode checks that everything runs; numbers are not meaningful. Continue with 01_dicom_and_windowing."
