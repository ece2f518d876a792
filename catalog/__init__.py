"""Finding scenes and putting them on one grid. Free of the model: never imports torch or dsqnet."""

from .bands import BandSpec
from .errors import CatalogError
from .prepare import PreparedScenes, choose_pair, prepare_scenes
from .radiometry import Radiometry, radiometry_of
from .regions import DateWindow, Region, date_pair, load_regions, parse_date, parse_region
from .sources import StacApi, StaticCatalog, open_source
from .store import is_complete, open_scenes

__all__ = [
    "BandSpec", "CatalogError", "DateWindow", "PreparedScenes", "Radiometry", "Region", "StacApi", "StaticCatalog",
    "choose_pair", "date_pair", "is_complete", "load_regions", "open_scenes", "open_source", "parse_date",
    "parse_region", "prepare_scenes", "radiometry_of",
]
