"""Reading over HTTP with a bounded patience, and saying in words why a read failed: assets through
GDAL, and STAC documents (``fetch_text``).

GDAL reads remote COGs by range requests through curl. Its defaults, and odc-stac's "cloud
defaults", retry a failing server ten times with a doubling delay (a 503 took over three minutes to
surface) and wait for a silent server for ever. Here a server gets a few retries, a connection
must open within 30 s, and a transfer that sends nothing for 30 s is given up. A user who knows
better sets the same GDAL variables in the environment; those win.

What GDAL says when it gives up ("HTTP response code: 503", "Operation too slow. Less than 1
bytes/sec transferred the last 30 seconds") is turned into what happened and what to do
(``http_problem``). GDAL often says less: a stalled or dropped transfer surfaces as "not recognized
as being in a supported file format" or "Failed to read directory". Then the URL is asked again,
once, by ``probe`` (``remote_failure`` does both), which tells a server that is silent or hangs up
from a file that is really corrupt.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from urllib.parse import urlsplit

REMOTE_READS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # a COG has no side-car files: no directory listing
    "GDAL_HTTP_MAX_RETRY": "3",  # on 429 and 5xx answers
    "GDAL_HTTP_RETRY_DELAY": "1",  # seconds, doubled at each retry
    "GDAL_HTTP_CONNECTTIMEOUT": "30",
    "GDAL_HTTP_LOW_SPEED_TIME": "30",  # a transfer that sends ...
    "GDAL_HTTP_LOW_SPEED_LIMIT": "1",  # ... under 1 byte/s for 30 s is given up
}


def http_retries():
    """The retries of a STAC request (a catalog document, a search): those of an asset, on 429 and 5xx
    answers, with GDAL's variables for how many and the first delay, so that one setting governs all
    of a run's HTTP; a connection refused is tried once more, a silent or dropped answer not again
    (it has had its timeout)."""
    from urllib3.util.retry import Retry

    retries = int(remote_setting("GDAL_HTTP_MAX_RETRY"))
    return Retry(total=retries, connect=1, read=0, status=retries, other=0, allowed_methods=None,
                 status_forcelist=(429, 500, 502, 503, 504), raise_on_status=False,
                 backoff_factor=float(remote_setting("GDAL_HTTP_RETRY_DELAY")), respect_retry_after_header=False)


def http_timeout() -> tuple[float, float]:
    """How long a STAC request (a catalog document, a search) waits: for the connection, then for each
    part of the answer, in seconds. An asset's two waits, from the same GDAL variables, so that a user
    who lengthens one lengthens both."""
    return float(remote_setting("GDAL_HTTP_CONNECTTIMEOUT")), float(remote_setting("GDAL_HTTP_LOW_SPEED_TIME"))


def silence_problem(host: str, timeout: float | tuple[float, float], connecting: bool = False) -> str:
    """What a request that timed out met, and the variable that waits longer."""
    connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    if connecting:
        return (f"no connection to {host} opened within {connect:g} s; check the URL and the network, try again "
                "later, or wait longer with GDAL_HTTP_CONNECTTIMEOUT=<seconds>")
    return (f"{host} did not answer within {read:g} s; check the URL and the network, try again later, or wait "
            "longer with GDAL_HTTP_LOW_SPEED_TIME=<seconds>")


def timed_out(err: Exception) -> str | None:
    """"connect" or "read" when the requests error ``err`` is a timeout, else None. A read timeout that
    used up urllib3's retries reaches requests as a ConnectionError, and pystac-client's as its own
    error with only the words left, so those are read too."""
    import requests
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ReadTimeoutError

    if isinstance(err, requests.ConnectTimeout):
        return "connect"
    if isinstance(err, requests.Timeout):
        return "read"
    reason = getattr(err.args[0], "reason", None) if err.args else None
    if isinstance(reason, NewConnectionError):  # a ConnectTimeoutError to urllib3: refused, or no such host
        return None
    if isinstance(reason, ConnectTimeoutError) or _NO_CONNECTION.search(str(err)):
        return "connect"
    if isinstance(reason, ReadTimeoutError) or re.search(r"Read timed out", str(err)):
        return "read"
    return None


def http_session():
    """A requests session that retries as ``http_retries`` says."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(max_retries=http_retries())
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def remote_options() -> dict[str, str]:
    """GDAL's options for remote reads: ``REMOTE_READS``, less what the environment sets itself."""
    return {key: value for key, value in REMOTE_READS.items() if key not in os.environ}


def configure_remote_loads() -> None:
    """Give odc-stac's loads (in every thread that reads) the options of ``remote_options``."""
    import odc.stac

    odc.stac.configure_rio(cloud_defaults=False, **remote_options())


@contextmanager
def remote_reads() -> Iterator[None]:
    """The options of ``remote_options`` around a direct rasterio read (a header, a check)."""
    import rasterio

    with rasterio.Env(**remote_options()):
        yield


def is_remote(href: str) -> bool:
    return str(href).startswith(("http://", "https://"))


_STATUS = re.compile(r"HTTP (?:response code|error code)\s*:?\s*(\d{3})", re.IGNORECASE)
_STALLED = re.compile(r"Operation too slow|Timeout was reached|timed out", re.IGNORECASE)
_NO_CONNECTION = re.compile(r"connect timeout|Connection timed out|Connect timeout", re.IGNORECASE)
_REFUSED = re.compile(r"Couldn't connect to server|Connection refused|Failed to connect", re.IGNORECASE)
_UNKNOWN_HOST = re.compile(r"Could not resolve host|Couldn't resolve host|Name or service not known|Failed to resolve|"
                           r"NameResolutionError|Temporary failure in name resolution|No address associated",
                           re.IGNORECASE)
_DROPPED = re.compile(r"transfer closed with|Recv failure|Connection reset|Connection was reset|Connection broken|"
                      r"IncompleteRead|Failure when receiving data|end of response with \d+ bytes missing|"
                      r"RemoteDisconnected|closed connection without response", re.IGNORECASE)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def http_status(texts: Iterable[str]) -> int | None:
    """The HTTP status GDAL or curl reported in ``texts``, if any."""
    return next((int(m[1]) for text in texts if (m := _STATUS.search(text))), None)


def http_problem(texts: Iterable[str], url: str) -> str | None:
    """Why the read of ``url`` failed, as the end of a sentence ("... cannot be read: <this>"), when the
    libraries' words in ``texts`` tell an HTTP failure; ``None`` when they tell something else."""
    texts = list(texts)
    joined = " ".join(texts)
    host = urlsplit(url).netloc or url
    status = http_status(texts)
    retries = remote_setting("GDAL_HTTP_MAX_RETRY")
    if status is not None:
        said = f"the server answered {status} {_reason(status)}".rstrip()
        if status in (401, 403):
            return (f"{said}: the asset needs credentials or a signed URL (Planetary Computer's are signed by "
                    "dsqnet itself; a private bucket needs its own credentials in GDAL's variables)")
        if status in (404, 410):
            return f"{said}: no file is at that URL; the Item's href is stale or wrong, so correct or remove the Item"
        if status == 429 or status >= 500:
            return (f"{said} (after {retries} retries): the server is failing or overloaded; try again later, "
                    "or raise GDAL_HTTP_MAX_RETRY")
        return f"{said}; check the URL"
    if _UNKNOWN_HOST.search(joined):
        return f"the host name {urlsplit(url).hostname!r} is not known; check the URL and the network"
    if _NO_CONNECTION.search(joined):
        return (f"no connection to {host} opened within {remote_setting('GDAL_HTTP_CONNECTTIMEOUT')} s; check the "
                "URL and the network, or try again later")
    if _REFUSED.search(joined):
        return f"no server answers at {host}; check the URL and the network, or try again later"
    if _STALLED.search(joined):
        return (f"{host} sent no data for {remote_setting('GDAL_HTTP_LOW_SPEED_TIME')} s; try again later, or "
                "wait longer with GDAL_HTTP_LOW_SPEED_TIME=<seconds>")
    if _DROPPED.search(joined):
        return f"{host} closed the connection in the middle of the transfer; try again later"
    return None


def probe(url: str) -> str | None:
    """What goes wrong when the start of ``url`` is asked for once, in ``http_problem``'s words; ``None``
    when it comes back whole (the file itself, then, is what is wrong)."""
    import requests

    try:
        with requests.get(url, headers={"Range": "bytes=0-16383"}, timeout=http_timeout(), stream=True) as answer:
            if answer.status_code >= 400:
                return http_problem([f"HTTP response code: {answer.status_code}"], url)
            for _ in answer.iter_content(chunk_size=4096):
                pass
    except requests.ConnectTimeout:
        return http_problem(["connect timeout"], url)
    except requests.Timeout:
        return http_problem(["Operation too slow"], url)
    except requests.ConnectionError as err:
        return http_problem([str(err)], url) or http_problem(["Connection reset"], url)
    except requests.RequestException as err:  # a body cut short: ChunkedEncodingError, ContentDecodingError
        return http_problem([f"Recv failure: {err}"], url)
    return None


def remote_failure(texts: Iterable[str], url: str) -> str | None:
    """``http_problem`` of what the libraries said, else of what a ``probe`` of ``url`` meets."""
    return http_problem(texts, url) or probe(url)


def shown(href: str) -> str:
    """``href`` as a message shows it: without its query, where a signed URL keeps its token."""
    return href.split("?", 1)[0] if is_remote(href) else href


def remote_setting(key: str) -> str:
    """The value GDAL reads for ``key``: the environment's, else ours."""
    return os.environ.get(key, REMOTE_READS[key])


def connection_problem(text: str, url: str) -> str:
    """What a failed connection to ``url`` was, from the words of requests' error ``text``."""
    host = urlsplit(url).netloc or url
    if _UNKNOWN_HOST.search(text):
        return f"the host name {urlsplit(url).hostname!r} is not known; check the URL and the network"
    if _DROPPED.search(text) and not _REFUSED.search(text):
        return f"{host} closed the connection in the middle of its answer; try again later"
    if _STALLED.search(text):
        return f"{host} did not answer in time; check the URL and the network, or try again later"
    return f"no server answers at {host}; check the URL and the network"


class Unanswered(OSError):
    """A URL that gave no usable answer; ``problem`` says why, ``status`` is the HTTP status if any."""

    def __init__(self, problem: str, status: int | None = None) -> None:
        super().__init__(problem)
        self.problem, self.status = problem, status


def fetch_text(url: str, timeout: float | tuple[float, float] | None = None) -> str:
    """The text at ``url`` (a STAC document), or ``Unanswered`` saying why not, in a user's words;
    ``timeout`` as requests takes it, ``http_timeout()`` when None."""
    import requests

    host = urlsplit(url).netloc or url
    timeout = timeout or http_timeout()
    try:
        with http_session() as session:
            response = session.get(url, timeout=timeout, headers={"Accept": "application/json"})
    except requests.RequestException as err:
        if (waited := timed_out(err)) is not None:
            raise Unanswered(silence_problem(host, timeout, connecting=waited == "connect")) from None
        raise Unanswered(connection_problem(str(err), url)) from None
    status = response.status_code
    if status >= 400:
        said = f"the server answered {status} {response.reason or _reason(status)}".rstrip()
        if status in (404, 410):
            raise Unanswered(f"{said}: nothing is at that URL", status)
        if status in (401, 403):
            raise Unanswered(f"{said}: it wants credentials, which a STAC reader does not send", status)
        if status == 429 or status >= 500:
            raise Unanswered(f"{said} (after {remote_setting('GDAL_HTTP_MAX_RETRY')} retries): the server is failing "
                             "or overloaded; try again later", status)
        raise Unanswered(said, status)
    return response.text
