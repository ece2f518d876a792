"""Planetary Computer's assets need a short-lived SAS token on each href before they can be read.

Its Items point at Azure Blob Storage (``https://<account>.blob.core.windows.net/<container>/...``),
which refuses anonymous reads; the Planetary Computer's SAS API hands out a read token per
storage account and container, anonymously. Items are signed just before their pixels are read,
after the scenes store's key is computed, so a new token never makes a finished store look stale.
"""

from __future__ import annotations

import json
import os
import re

import pystac

from .errors import CatalogError
from .remote import Unanswered, fetch_text

SAS_API = "https://planetarycomputer.microsoft.com/api/sas/v1/token"
SAS_API_ENV = "DSQNET_PLANETARY_COMPUTER_SAS_API"  # another token service (a mirror, or a test's)
_BLOB = re.compile(r"https://(?P<account>[a-z0-9]+)\.blob\.core\.windows\.net/(?P<container>[^/?]+)/[^?]*$")


def sign_items(items: list[pystac.Item], assets: list[set[str]] | None = None) -> list[pystac.Item]:
    """Copies of ``items`` whose Azure Blob hrefs (of ``assets[i]`` only, if given) carry a read
    token; items with nothing to sign as they are."""
    signed = []
    for index, item in enumerate(items):
        wanted = assets[index] if assets is not None else set(item.assets)
        keys = [k for k, a in item.assets.items() if k in wanted and _BLOB.match(a.href)]
        if not keys:
            signed.append(item)
            continue
        copy = item.clone()
        for key in keys:
            copy.assets[key].href = signed_href(copy.assets[key].href)
        signed.append(copy)
    return signed


def signed_href(href: str, timeout: float | None = None) -> str:
    """``href`` with a read token when it is an unsigned Azure Blob URL; otherwise unchanged."""
    match = _BLOB.match(href)
    if not match:
        return href
    return f"{href}?{_token(match['account'], match['container'], timeout)}"


_TOKENS: dict[tuple[str, str, str], str] = {}


def _token(account: str, container: str, timeout: float | None) -> str:
    """A token per storage container, fetched once per process (they last about an hour)."""
    service = os.environ.get(SAS_API_ENV, SAS_API).rstrip("/")
    if (service, account, container) not in _TOKENS:
        _TOKENS[service, account, container] = _fetch_token(service, account, container, timeout)
    return _TOKENS[service, account, container]


def _fetch_token(service: str, account: str, container: str, timeout: float | None) -> str:
    url = f"{service}/{account}/{container}"
    try:
        return str(json.loads(fetch_text(url, timeout))["token"])
    except Unanswered as err:
        problem = err.problem
    except (KeyError, TypeError, ValueError):
        problem = "its answer holds no token"
    raise CatalogError(f"cannot get a read token for Azure storage {account}/{container} from {url}: {problem}. "
                       "Planetary Computer assets need one; check the network, or use another catalog")
