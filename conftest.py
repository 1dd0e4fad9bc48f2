"""Test-wide settings for tests, notebooks and exercises: quick mode, no hub downloads, no network.

Notebook kernels started by nbval inherit the environment set here, so they run in
quick mode with hub downloads switched off as well.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("ICHLAB_MODE", "quick")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# Two threads match CI's two cores; more only adds contention between kernels and workers.
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO_ROOT = Path(__file__).resolve().parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
REAL_CT_SERIES = SHARED_DATA / "real_ct" / "ge_hispeed_head_tilt"


def _is_local(address: object) -> bool:
    if isinstance(address, (bytes, str)) and not isinstance(address, tuple):
        return True  # a Unix socket path
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost


_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex


class NetworkAccessError(RuntimeError):
    """Raised when a test tries to reach a host other than localhost."""


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address):
        raise NetworkAccessError(f"tests must not reach the network; blocked connect to {address!r}")
    return _original_connect(self, address)


def _guarded_connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address):
        raise NetworkAccessError(f"tests must not reach the network; blocked connect to {address!r}")
    return _original_connect_ex(self, address)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any test that opens a connection to a host other than localhost."""
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    yield


@pytest.fixture
def real_ct_series() -> Path:
    """The real tilted GE head-CT series beside the clone, or a skip when it is absent."""
    if not REAL_CT_SERIES.is_dir():
        pytest.skip(f"real CT series not found at {REAL_CT_SERIES}; it is only present beside a developer or CI clone")
    return REAL_CT_SERIES


@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread, restoring the previous count afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_collection_modifyitems(config, items):
    """Mark every notebook cell run by nbval as slow, so ``-m 'not slow'`` gives a fast subset."""
    for item in items:
        if item.fspath is not None and str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
