"""A small STAC API on 127.0.0.1 for tests: a landing page and ``/search`` over a static catalog.

It answers what pystac-client asks: ``GET /`` (conformance and the search link) and
``POST /search`` with ``intersects``, ``datetime`` and ``collections``. Real HTTP, no internet.
"""

from __future__ import annotations

import json
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pystac
from shapely.geometry import shape

from catalog.sources import item_datetime


def _handler(items: list[pystac.Item]):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def _send(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/geo+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            root = f"http://{self.headers['Host']}"
            self._send({
                "type": "Catalog", "id": "test-api", "description": "test", "stac_version": "1.0.0",
                "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"],
                "links": [{"rel": "self", "href": root + "/"}, {"rel": "root", "href": root + "/"},
                          {"rel": "search", "href": root + "/search", "method": "POST", "type": "application/geo+json"}],
            })

        def do_POST(self) -> None:  # noqa: N802
            query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            start, end = (pystac.utils.str_to_datetime(t) for t in query["datetime"].split("/"))
            region = shape(query["intersects"])
            found = [i.to_dict() for i in items
                     if start <= item_datetime(i) <= end and shape(i.geometry).intersects(region)
                     and (not query.get("collections") or i.collection_id in query["collections"])]
            self._send({"type": "FeatureCollection", "features": found, "links": []})

    return Handler


@contextmanager
def stac_api(items: list[pystac.Item]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(items))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


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
