"""The mosaic as Cloud-Optimized GeoTIFFs: ``change_prob.tif`` (float32) and ``change.tif`` (three states).

Each block is written as a tiled GeoTIFF as soon as it is stitched (flows/block_outputs.py); at the
end GDAL copies a VRT mosaic of those into each COG (tiles, overviews, ghost header), reading it in
order through a small cache, so memory stays at a few tiles whatever the scene size.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine

from .probability_store import CHUNK
from .tiling import Block

if TYPE_CHECKING:
    from .block_outputs import BlockOutputs

UNCHANGED, CHANGED, NOT_OBSERVED = 0, 1, 255
COG_OPTIONS = {"driver": "COG", "compress": "deflate", "blocksize": 512, "bigtiff": "IF_SAFER",
               "num_threads": "ALL_CPUS"}
# GDAL's block cache, which the COG copies read their source through. Its default is 5 % of the
# machine's memory, so the copies kept every tile they read: at 8192² the two COGs grew this
# process by 0.51 GB, against 0.25 GB with this cap and 0.10-0.12 GB at 2048² either way, in
# 7.0-8.3 s against 8.1 s (2-core CPU). The copies read their source in order: a small cache serves them.
GDAL_CACHE_BYTES = 64 << 20


@dataclass(frozen=True)
class ChangeCounts:
    observed_pixels: int
    changed_pixels: int
    pixel_area_m2: float

    @property
    def changed_km2(self) -> float:
        return self.changed_pixels * self.pixel_area_m2 / 1e6

    @property
    def observed_km2(self) -> float:
        return self.observed_pixels * self.pixel_area_m2 / 1e6


def change_classes(probability: np.ndarray, threshold: float) -> np.ndarray:
    """0 unchanged / 1 changed / 255 not observed (NaN probability)."""
    classes = np.where(probability >= threshold, CHANGED, UNCHANGED).astype(np.uint8)
    classes[np.isnan(probability)] = NOT_OBSERVED
    return classes


def write_block_rasters(probability: np.ndarray, block: Block, crs: str, transform: Affine, threshold: float,
                        prob_path: Path, change_path: Path) -> tuple[int, int]:
    """One block's probabilities and classes as tiled GeoTIFFs, placed on the grid; returns (observed, changed) pixels.

    Compressed fast (deflate level 1, in the calling thread): they are read once, by the COG copies.
    """
    local = transform * Affine.translation(block.left, block.top)
    height, width = block.shape
    base = {"driver": "GTiff", "height": height, "width": width, "count": 1, "crs": crs,
            "transform": local, "tiled": True, "blockxsize": CHUNK, "blockysize": CHUNK, "compress": "deflate",
            "zlevel": 1, "bigtiff": "IF_SAFER"}
    classes = change_classes(probability, threshold)
    with rasterio.open(prob_path, "w", dtype="float32", nodata=np.nan, **base) as tif:
        tif.write(probability.astype(np.float32, copy=False), 1)
    with rasterio.open(change_path, "w", dtype="uint8", nodata=NOT_OBSERVED, **base) as tif:
        tif.write(classes, 1)
    return int((classes != NOT_OBSERVED).sum()), int((classes == CHANGED).sum())


def write_change_rasters(outputs: BlockOutputs, blocks: list[Block], folder: Path) -> ChangeCounts:
    """``change_prob.tif`` and ``change.tif`` in ``folder``, both COGs on the scenes' grid, copied from
    VRT mosaics of the blocks' GeoTIFFs (made first where missing), the two copies at once."""
    outputs.complete(blocks)
    vrts = {"prob": folder / ".change_prob.vrt", "change": folder / ".change.vrt"}
    try:
        _write_vrt(vrts["prob"], outputs, outputs.raster_files("prob", blocks), "Float32", "nan")
        _write_vrt(vrts["change"], outputs, outputs.raster_files("change", blocks), "Byte", str(NOT_OBSERVED),
                   band_extra=_palette_and_tags(outputs.threshold))
        with ThreadPoolExecutor(2) as copies:  # GDAL works without the GIL: the copies overlap
            done = [copies.submit(_copy_cog, vrts["prob"], folder / "change_prob.tif", overview_resampling="average",
                                  predictor=3),
                    copies.submit(_copy_cog, vrts["change"], folder / "change.tif", overview_resampling="mode")]
            for copy in done:
                copy.result()
    finally:
        for path in vrts.values():
            path.unlink(missing_ok=True)
    return outputs.counts(blocks)


def _copy_cog(source: Path, target: Path, **options) -> None:
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
        rasterio.shutil.copy(source, target, **options, **COG_OPTIONS)


def _write_vrt(path: Path, outputs: BlockOutputs, files: list[tuple[Block, Path]], data_type: str, nodata: str,
               band_extra: str = "") -> None:
    """A VRT that places each block's GeoTIFF at its offset on the scene's grid."""
    height, width = outputs.shape
    sources = "".join(
        f"""    <SimpleSource>
      <SourceFilename relativeToVRT="0">{escape(str(tif.resolve()))}</SourceFilename>
      <SourceBand>1</SourceBand>
      <SrcRect xOff="0" yOff="0" xSize="{block.shape[1]}" ySize="{block.shape[0]}"/>
      <DstRect xOff="{block.left}" yOff="{block.top}" xSize="{block.shape[1]}" ySize="{block.shape[0]}"/>
    </SimpleSource>
""" for block, tif in files)
    a, b, c, d, e, f = outputs.transform
    path.write_text(f"""<VRTDataset rasterXSize="{width}" rasterYSize="{height}">
  <SRS>{escape(outputs.crs)}</SRS>
  <GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>
  <VRTRasterBand dataType="{data_type}" band="1">
    <NoDataValue>{nodata}</NoDataValue>
{band_extra}{sources}  </VRTRasterBand>
</VRTDataset>
""")


def _palette_and_tags(threshold: float) -> str:
    """``change.tif``'s colours (unchanged clear, changed red, not observed grey) and its legend."""
    colours = {UNCHANGED: (0, 0, 0, 0), CHANGED: (230, 30, 30, 255), NOT_OBSERVED: (128, 128, 128, 255)}
    entries = "".join(f'      <Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>\n'
                      for r, g, b, a in (colours.get(value, (0, 0, 0, 0)) for value in range(256)))
    return f"""    <Metadata>
      <MDI key="classes">0 unchanged, 1 changed, 255 not observed in both dates</MDI>
      <MDI key="threshold">{threshold}</MDI>
    </Metadata>
    <ColorInterp>Palette</ColorInterp>
    <ColorTable>
{entries}    </ColorTable>
"""
