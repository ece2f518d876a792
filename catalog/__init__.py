"""Finding scenes and putting them on one grid. Free of the model: never imports torch or dsqnet.

The names below are imported when first used, not with the package: ``catalog.errors`` is imported by
every process of a run, the block-output children among them, which have no use for odc-stac,
xarray and dask (a second of CPU to import, at every child's start).
"""

from importlib import import_module

_WHERE = {
    "BandSpec": "bands", "CatalogError": "errors", "PreparedScenes": "prepare", "choose_pair": "prepare",
    "prepare_scenes": "prepare", "Radiometry": "radiometry", "radiometry_of": "radiometry",
    "DateWindow": "regions", "Region": "regions", "date_pair": "regions", "load_regions": "regions",
    "parse_date": "regions", "parse_region": "regions", "StacApi": "sources", "StaticCatalog": "sources",
    "open_source": "sources", "is_complete": "store", "open_scenes": "store",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module 'catalog' has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
