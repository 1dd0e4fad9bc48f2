"""A minimal Chrome DevTools Protocol client: find a headless Chromium's page and evaluate JavaScript in it."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Protocol


class Deadline(Protocol):
    """A shared time limit: ``remaining(step)`` returns the seconds left or raises a timeout naming ``step``."""

    def remaining(self, step: str) -> float: ...


def _local_opener() -> urllib.request.OpenerDirector:
    # An empty proxy table, so a proxy set in the environment never receives 127.0.0.1 traffic.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get_json(url: str, timeout: float) -> object:
    """Fetch ``url`` on 127.0.0.1 and decode its JSON body."""
    with _local_opener().open(url, timeout=timeout) as response:
        return json.loads(response.read().decode())


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page, over a WebSocket."""

    def __init__(self, websocket_url: str, timeout: float):
        import websocket  # websocket-client, a dependency of jupyter_server

        # Without an Origin header Chromium accepts the connection without --remote-allow-origins.
        self._websocket = websocket
        self._socket = websocket.create_connection(websocket_url, timeout=timeout, suppress_origin=True)
        self._next_id = 0

    def call(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        """Send one command and return its result, skipping the events that arrive before it.

        Raises ``TimeoutError`` when no result arrives within ``timeout`` seconds.
        """
        self._next_id += 1
        message_id = self._next_id
        end = time.monotonic() + timeout
        self._socket.settimeout(timeout)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params or {}}))
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"DevTools {method} returned no result within {timeout:.0f} s")
            self._socket.settimeout(left)
            try:
                message = json.loads(self._socket.recv())
            except self._websocket.WebSocketTimeoutException as error:
                raise TimeoutError(f"DevTools {method} returned no result within {timeout:.0f} s") from error
            if message.get("id") != message_id:
                continue
            if "error" in message:
                raise RuntimeError(f"DevTools {method} failed: {message['error']}")
            return message["result"]

    def evaluate(self, expression: str, timeout: float = 30.0) -> object:
        """Evaluate JavaScript in the page, await a returned promise, and return its JSON value."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails'].get('exception', result['exceptionDetails'])}")
        return result["result"].get("value")

    def close(self) -> None:
        self._socket.close()


def connect_devtools(chromium: subprocess.Popen, profile_dir: Path, page_url_prefix: str, deadline: Deadline) -> DevTools:
    """Find Chromium's DevTools port in its profile folder and connect to the page at ``page_url_prefix``."""
    port_file = profile_dir / "DevToolsActivePort"
    while not port_file.is_file() or not port_file.read_text().strip():
        if chromium.poll() is not None:
            raise RuntimeError(f"Chromium exited with status {chromium.returncode} before opening its DevTools port")
        deadline.remaining("waiting for Chromium's DevTools port")
        time.sleep(0.2)
    port = int(port_file.read_text().split()[0])

    while True:
        targets = get_json(f"http://127.0.0.1:{port}/json/list", timeout=min(5.0, deadline.remaining("listing pages")))
        pages = [target for target in targets if target.get("type") == "page" and target.get("url", "").startswith(page_url_prefix)]
        if pages:
            return DevTools(pages[0]["webSocketDebuggerUrl"], timeout=min(30.0, deadline.remaining("connecting to the page")))
        time.sleep(0.3)
