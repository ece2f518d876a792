"""How long reading a static STAC catalog over HTTP takes when its server is far away.

A catalog of ``--items`` Items in sub-catalogs of 50, served from 127.0.0.1 by the tests' fault
server with ``--latency-ms`` added to every answer (tests/catalog/fault_servers.py). Read one
document after another, the time is about (documents x latency); ``catalog.sources`` reads each
level's documents together, so the report gives the time and how many answers were awaited at
once on average (documents x latency / time).

    python -m bench.static_catalog --items 200 --latency-ms 50
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import pystac

from catalog import open_source
from tests.catalog.fault_servers import faulty_http


def write_catalog(root: Path, items: int, per_child: int = 50) -> None:
    catalog = pystac.Catalog("far-away", "a catalog to read over a slow link")
    when = dt.datetime(2021, 6, 1, tzinfo=dt.timezone.utc)
    for start in range(0, items, per_child):
        child = pystac.Catalog(f"tile-{start // per_child}", "one tile's scenes")
        catalog.add_child(child)
        for k in range(start, min(start + per_child, items)):
            x, y = k % 100, k // 100
            child.add_item(pystac.Item(f"scene-{k}", {"type": "Point", "coordinates": [x, y]}, [x, y, x, y], when, {}))
    catalog.normalize_hrefs(str(root / "stac"))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--latency-ms", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "site"
        write_catalog(root, args.items)
        with faulty_http([(r"\.json$", "slow", args.latency_ms)], root=root) as (url, log):
            start = time.perf_counter()
            found = open_source(f"{url}/stac/catalog.json").items()
            seconds = time.perf_counter() - start
            documents = sum(".json" in line for line in log.read_text().splitlines())
    assert len(found) == args.items, (len(found), args.items)
    print(f"{len(found)} Items, {documents} documents at {args.latency_ms} ms each: {seconds:.2f} s "
          f"({documents * args.latency_ms / 1000 / seconds:.1f} answers awaited at once on average; one after "
          f"another would take at least {documents * args.latency_ms / 1000:.1f} s)")


if __name__ == "__main__":
    main()
