"""The bytes of a tiled TIFF's directories: read from the blocks' files, written for the files we make.

``flows/outputs/cog.py`` builds each COG from tiles the blocks already encoded
(``flows/outputs/tile_encoding.py``) into files whose tags GDAL wrote. It needs what GDAL does not
offer: a block's file from its tags and tiles (``tiled_file``), where each tile's bytes sit in it,
and directories (IFDs) that point at the same bytes copied into the COG. Tags are kept as raw
bytes in the file's byte order, so the georeferencing, nodata, colour map and metadata that GDAL
wrote are carried into the COG unchanged, whatever the CRS.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

NEW_SUBFILE_TYPE, IMAGE_WIDTH, IMAGE_LENGTH = 254, 256, 257
TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS = 322, 323, 324, 325
LAYOUT_TAGS = {NEW_SUBFILE_TYPE, IMAGE_WIDTH, IMAGE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS}
# The georeferencing and GDAL's metadata belong to the full-resolution image only.
GEOREFERENCING_TAGS = {33550, 33922, 34264, 34735, 34736, 34737, 42112}

SHORT, LONG, LONG8 = 3, 4, 16
TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
CLASSIC_LIMIT = 1 << 32


@dataclass(frozen=True)
class Tag:
    type: int
    count: int
    value: bytes  # in the file's byte order


@dataclass(frozen=True)
class Directory:
    """The first IFD of a tiled, single-band TIFF."""

    byte_order: str  # "<" or ">"
    tags: dict[int, Tag]

    def number(self, code: int) -> int:
        return int(self.numbers(code)[0])

    def numbers(self, code: int) -> np.ndarray:
        tag = self.tags[code]
        kind = {SHORT: "u2", LONG: "u4", LONG8: "u8"}[tag.type]
        return np.frombuffer(tag.value, f"{self.byte_order}{kind}", tag.count)

    def tiles(self) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, byte counts) of the tiles, as arrays of tile rows by tile columns."""
        if TILE_OFFSETS not in self.tags:
            raise ValueError("not a tiled TIFF: it has no TileOffsets")
        across = -(-self.number(IMAGE_WIDTH) // self.number(TILE_WIDTH))
        down = -(-self.number(IMAGE_LENGTH) // self.number(TILE_LENGTH))
        shape = (down, across)
        return (self.numbers(TILE_OFFSETS).astype(np.uint64).reshape(shape),
                self.numbers(TILE_BYTE_COUNTS).astype(np.uint64).reshape(shape))


def read_first_directory(path: Path) -> Directory:
    """The first IFD of a classic or BigTIFF file, its values read wherever they are stored."""
    with open(path, "rb") as tif:
        return read_first_directory_of(tif, str(path))


def read_first_directory_of(tif: BinaryIO, name: str) -> Directory:
    """As ``read_first_directory``, from an open file (or ``io.BytesIO``) called ``name`` in errors."""
    head = tif.read(16)
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None:
        raise ValueError(f"{name} is not a TIFF file")
    version = struct.unpack(f"{order}H", head[2:4])[0]
    if version == 42:
        count_format, offset_format, inline = "I", "I", 4
        (ifd_offset,) = struct.unpack(f"{order}I", head[4:8])
        tif.seek(ifd_offset)
        (entries,) = struct.unpack(f"{order}H", tif.read(2))
    elif version == 43:
        count_format, offset_format, inline = "Q", "Q", 8
        (ifd_offset,) = struct.unpack(f"{order}Q", head[8:16])
        tif.seek(ifd_offset)
        (entries,) = struct.unpack(f"{order}Q", tif.read(8))
    else:
        raise ValueError(f"{name} is not a TIFF file (version {version})")
    entry = struct.Struct(f"{order}HH{count_format}{inline}s")
    raw = tif.read(entries * entry.size)
    tags = {}
    for i in range(entries):
        code, kind, count, field = entry.unpack_from(raw, i * entry.size)
        size = TYPE_SIZES.get(kind, 1) * count
        if size <= inline:
            value = field[:size]
        else:
            tif.seek(struct.unpack(f"{order}{offset_format}", field)[0])
            value = tif.read(size)
        tags[code] = Tag(kind, count, value)
    return Directory(order, tags)


@dataclass(frozen=True)
class Image:
    """One image of the COG: its size, tile byte counts (rows by columns) and the tags it shares."""

    width: int
    height: int
    byte_counts: np.ndarray
    tags: dict[int, Tag]
    reduced: bool  # an overview


class DirectoryWriter:
    """Serialises a chain of IFDs, one per image, with their values after each, for a file whose
    tile data follows them. Offsets are only known once every directory's size is, so sizes come first."""

    def __init__(self, byte_order: str, bigtiff: bool) -> None:
        self.order = byte_order
        self.bigtiff = bigtiff
        self.inline = 8 if bigtiff else 4
        self.entry = struct.Struct(f"{byte_order}HH{'Q' if bigtiff else 'I'}{self.inline}s")
        self.count = struct.Struct(f"{byte_order}{'Q' if bigtiff else 'H'}")
        self.offset = struct.Struct(f"{byte_order}{'Q' if bigtiff else 'I'}")

    def header(self, first_ifd: int) -> bytes:
        if self.bigtiff:
            return struct.pack(f"{self.order}2sHHHQ", self._mark(), 43, 8, 0, first_ifd)
        return struct.pack(f"{self.order}2sHI", self._mark(), 42, first_ifd)

    @property
    def header_size(self) -> int:
        return 16 if self.bigtiff else 8

    def _mark(self) -> bytes:
        return b"II" if self.order == "<" else b"MM"

    def tags(self, image: Image, tile_offsets: np.ndarray) -> dict[int, Tag]:
        tags = {code: tag for code, tag in image.tags.items()
                if code not in LAYOUT_TAGS and not (image.reduced and code in GEOREFERENCING_TAGS)}
        offsets_type, offsets_kind = (LONG8, "u8") if self.bigtiff else (LONG, "u4")
        tags[NEW_SUBFILE_TYPE] = self._long(1 if image.reduced else 0)
        tags[IMAGE_WIDTH] = self._long(image.width)
        tags[IMAGE_LENGTH] = self._long(image.height)
        tags[TILE_OFFSETS] = Tag(offsets_type, tile_offsets.size,
                                 tile_offsets.astype(f"{self.order}{offsets_kind}").tobytes())
        tags[TILE_BYTE_COUNTS] = Tag(LONG, image.byte_counts.size,
                                     image.byte_counts.astype(f"{self.order}u4").tobytes())
        return tags

    def _long(self, value: int) -> Tag:
        return Tag(LONG, 1, struct.pack(f"{self.order}I", value))

    def size(self, tags: dict[int, Tag]) -> int:
        """Bytes the IFD takes with its values."""
        fixed = self.count.size + len(tags) * self.entry.size + self.offset.size
        return fixed + sum(_even(len(tag.value)) for tag in tags.values() if len(tag.value) > self.inline)

    def directory(self, tags: dict[int, Tag], at: int, next_ifd: int) -> bytes:
        """The IFD placed at byte ``at``, its values right after it, pointing to ``next_ifd`` (0: last)."""
        values_at = at + self.count.size + len(tags) * self.entry.size + self.offset.size
        entries, values = [], []
        for code in sorted(tags):  # TIFF wants the entries in ascending tag order
            tag = tags[code]
            if len(tag.value) <= self.inline:
                field = tag.value.ljust(self.inline, b"\0")
            else:
                field = self.offset.pack(values_at)
                values.append(tag.value.ljust(_even(len(tag.value)), b"\0"))
                values_at += _even(len(tag.value))
            entries.append(self.entry.pack(code, tag.type, tag.count, field))
        return self.count.pack(len(tags)) + b"".join(entries) + self.offset.pack(next_ifd) + b"".join(values)


def _even(size: int) -> int:
    """Values start on a word boundary."""
    return size + (size & 1)


def tiled_file(template: Directory, tiles: list[bytes]) -> list[bytes]:
    """The pieces of a one-image TIFF with ``template``'s tags and these encoded ``tiles`` (row by
    row): its header, its directory with the values, then the tiles. BigTIFF only when the tiles
    would pass classic TIFF's 4 GiB."""
    shape = template.tiles()[0].shape
    if len(tiles) != shape[0] * shape[1]:
        raise ValueError(f"{len(tiles)} tiles for an image of {shape[0]} x {shape[1]} tiles")
    counts = np.array([len(tile) for tile in tiles], np.uint64).reshape(shape)
    image = Image(template.number(IMAGE_WIDTH), template.number(IMAGE_LENGTH), counts, template.tags, reduced=False)
    for bigtiff in (False, True):
        writer = DirectoryWriter(template.byte_order, bigtiff)
        directory_size = writer.size(writer.tags(image, np.zeros(counts.size, np.uint64)))
        data_at = writer.header_size + directory_size
        if bigtiff or data_at + int(counts.sum()) < CLASSIC_LIMIT:
            break
    offsets = data_at + np.concatenate(([0], np.cumsum(counts.ravel())[:-1])).astype(np.uint64)
    directory = writer.directory(writer.tags(image, offsets), writer.header_size, 0)
    return [writer.header(writer.header_size), directory, *tiles]
