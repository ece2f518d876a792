"""Servers on 127.0.0.1 that misbehave the way real ones do: a static file server or a proxy in front
of a real STAC API (``rustac serve``), answering chosen paths with an error status, silence, a
body cut short, or a rewritten STAC document.

A fault is ``(path_regex, kind, arg[, healthy[, times]])``: the first fault whose regex matches the
request path applies, after ``healthy`` good answers to such paths (a file's header read, its
pixels not), to ``times`` requests (all, by default; then the server is healthy again):

- ``("status", 503)``: answer with that status (and an HTML page, as web servers do);
- ``("hang", None)``: accept the request and never answer;
- ``("slow", ms)``: answer after ``ms`` milliseconds, as a server far away does;
- ``("stall", None)``: send the headers and a few bytes of the body, then nothing;
- ``("cut", n)``: send the first ``n`` bytes of the body, then close the connection;
- ``("short", n)``: send the first ``n`` bytes of the body as if they were all of it;
- ``("json", name)``: rewrite the JSON answer with one of ``_REWRITES`` (a broken API's answer);
- ``("query", name)``: forward the request without its ``name`` parameter (an API that ignores it).

A proxy rewrites the upstream's own URL in what it forwards, so that the links it serves lead back
through it.

Every request is logged (method, path) to a file the test can read: how often a client retried.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.catalog.stac_servers import free_port, python_server

Fault = tuple  # (path_regex, kind, arg[, healthy[, times]])

_FAULT_SERVER = r"""
import asyncio, json, re, sys
import httpx, uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

root, upstream, port, log, faults = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
files = Starlette(routes=[Mount("/", StaticFiles(directory=root))]) if root else None
client = httpx.AsyncClient(base_url=upstream, timeout=60) if upstream else None

def next_loop(document, url, method, body):
    # the next page is this page again, as from an API that drops its paging token
    links = [link for link in document.get("links", []) if link.get("rel") != "next"]
    again = {"rel": "next", "href": url, "type": "application/geo+json", "method": method}
    if body:
        again["body"] = json.loads(body)
    document["links"] = links + [again]
    return document

def no_item_search(document, url, method, body):
    document["conformsTo"] = [c for c in document.get("conformsTo", []) if not c.endswith("/item-search")]
    return document

SEEN = {}
REWRITES = {"next-loop": next_loop, "no-item-search": no_item_search}

async def read_body(receive):
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body

async def answer_of(scope, receive, dropped=None):
    # (status, headers, body) of the healthy server, and the request's body
    if files is not None:
        sent = []
        async def keep(message):
            sent.append(message)
        await files(scope, receive, keep)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return start["status"], list(start["headers"]), body, b""
    body = asked = await read_body(receive)
    query = scope["query_string"].decode()
    if dropped:
        query = "&".join(p for p in query.split("&") if p and not p.startswith(dropped + "="))
        if body:
            document = json.loads(body)
            document.pop(dropped, None)
            body = json.dumps(document).encode()
    headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.decode() not in ("host", "content-length")}
    answer = await client.request(scope["method"], scope["path"] + ("?" + query if query else ""), content=body,
                                  headers=headers)
    kept = [(k.encode(), v.encode()) for k, v in answer.headers.items()
            if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")]
    here = "http://" + dict(scope["headers"])[b"host"].decode()
    content = answer.content.replace(upstream.rstrip("/").encode(), here.encode())  # links lead back here
    return answer.status_code, kept, content, asked

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    with open(log, "a") as out:
        out.write(f"{scope['method']} {path}\n")
    index = next((k for k, fault in enumerate(faults) if re.search(fault[0], path)), None)
    kind, arg = faults[index][1:3] if index is not None else (None, None)
    if index is not None:
        SEEN[index] = count = SEEN.get(index, 0) + 1
        rest = faults[index][3:]
        healthy, times = (rest[0] if rest else 0), (rest[1] if len(rest) > 1 else None)
        if count <= healthy or (times is not None and count > healthy + times):
            kind, arg = None, None
    if kind == "status":
        page = f"<html><body><h1>{arg} Error</h1><p>The server could not answer.</p></body></html>".encode()
        await send({"type": "http.response.start", "status": arg,
                    "headers": [(b"content-type", b"text/html"), (b"content-length", str(len(page)).encode())]})
        await send({"type": "http.response.body", "body": page})
        return
    if kind == "hang":
        await asyncio.sleep(3600)
        return
    if kind == "slow":
        await asyncio.sleep(arg / 1000)
    status, headers, body, asked = await answer_of(scope, receive, arg if kind == "query" else None)
    if kind == "short":
        body = body[:arg]
    if kind == "json":
        url = f"http://{dict(scope['headers'])[b'host'].decode()}{path}"
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode()
        body = json.dumps(REWRITES[arg](json.loads(body), url, scope["method"], asked)).encode()
    if scope["method"] != "HEAD":  # a HEAD answer tells the length of the body it does not send
        headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if kind == "stall":
        await send({"type": "http.response.body", "body": body[:16], "more_body": True})
        await asyncio.sleep(3600)
    elif kind == "cut":
        await send({"type": "http.response.body", "body": body[:arg], "more_body": True})
        raise RuntimeError("connection dropped")  # uvicorn closes the connection mid-body
    else:
        await send({"type": "http.response.body", "body": body})

uvicorn.run(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off", timeout_graceful_shutdown=1)
"""


@contextmanager
def faulty_http(faults: list[Fault], root: Path | None = None, upstream: str | None = None,
                log: Path | None = None) -> Iterator[tuple[str, Path]]:
    """Files under ``root``, or the server at ``upstream``, served with ``faults``; yields the base URL
    and the file that lists the requests received."""
    if (root is None) == (upstream is None):
        raise ValueError("give root (files to serve) or upstream (a server to proxy), not both")
    port = free_port()
    log = log or Path(root or ".").parent / f"requests-{port}.txt"
    log.write_text("")
    with python_server([_FAULT_SERVER, str(root or ""), upstream or "", str(port), str(log),
                        json.dumps([list(f) for f in faults])], port) as url:
        yield url, log


def requests_for(log: Path, path_part: str) -> int:
    """How many requests the server received for paths containing ``path_part``."""
    return sum(path_part in line for line in log.read_text().splitlines())
