"""Real servers on 127.0.0.1 for the catalog tests: a STAC API (``rustac serve``) and a static file
server with HTTP range requests (Starlette's ``StaticFiles`` under uvicorn), started by the tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pystac
import requests

RUSTAC = shutil.which("rustac") or str(Path(sys.executable).with_name("rustac"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def rustac_api(items: list[pystac.Item], folder: Path) -> Iterator[str]:
    """A STAC API serving ``items`` (collections made for them), in rustac's in-memory backend."""
    path = folder / "api-items.json"
    pystac.ItemCollection(items).save_object(dest_href=str(path))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([RUSTAC, "serve", "--addr", f"127.0.0.1:{port}", "--create-collections", str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


# A static file server in its own process (GDAL reads while holding the GIL; a server thread in the
# test process would wait for it). Starlette's StaticFiles answers Range requests with 206.
_STATIC_SERVER = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

root, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
files = Starlette(routes=[Mount("/", StaticFiles(directory=root))])

async def app(scope, receive, send):
    if scope["type"] == "http":
        with open(log, "a") as out:
            out.writelines(v.decode() + "\\n" for k, v in scope["headers"] if k == b"range")
    await files(scope, receive, send)

uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
"""


@contextmanager
def static_http(root: Path) -> Iterator[tuple[str, Path]]:
    """``root`` served over HTTP; yields the base URL and a file that lists the Range headers received."""
    port = free_port()
    log = root.parent / f"ranges-{port}.txt"
    log.write_text("")
    with python_server([_STATIC_SERVER, str(root), str(port), str(log)], port) as url:
        yield url, log


@contextmanager
def python_server(script_and_args: list[str], port: int) -> Iterator[str]:
    """``python -c SCRIPT ARGS...``, a server on ``port`` in its own process (GDAL reads while holding
    the GIL; a server thread in the test process would wait for it); yields its base URL once it answers."""
    server = subprocess.Popen([sys.executable, "-c", *script_and_args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url + "/", server, ok_statuses=(200, 404))
        yield url
    finally:
        server.kill()  # at once: a request it holds open (a fault that hangs) would delay a graceful stop
        server.wait(timeout=10)


@contextmanager
def silent_server() -> Iterator[str]:
    """A port that accepts connections and never answers: a STAC API that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        sock.close()


def _wait_for(url: str, process: subprocess.Popen | None, ok_statuses=(200,), timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url} exited: {process.stdout.read().decode() if process.stdout else ''}")
        try:
            if requests.get(url, timeout=5).status_code in ok_statuses:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not start within {timeout:g} s")
