"""Where the benchmarks keep their files, and how their labels encode change.

Each layout names the three folders of a split (before, after, label), the image suffixes, and how
a label's grey values map to {0 unchanged, 1 changed, 255 ignored}. Pairs are matched by file
stem; a split can be narrowed by a list file of stems (``train.txt``, one stem a line), as the
benchmarks' tools write them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IGNORE = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class DatasetError(ValueError):
    """A dataset folder that does not match its layout, naming the files at fault."""


@dataclass(frozen=True)
class Layout:
    """Folder names (before, after, label) under a split, tried in order; and the label encoding.

    ``labels``: ``"threshold"`` maps grey >= 128 to changed (0/255 masks, lossy JPEG masks);
    ``"zero-one"`` keeps 0 and 1 and reads 255 as ignore; ``"auto"`` picks one of the two by
    looking at the labels (0/1/255 masks with a 1 anywhere are zero-one).
    """

    folders: tuple[tuple[str, str, str], ...]
    labels: str = "threshold"
    splits: bool = True


LAYOUTS: dict[str, Layout] = {
    "levir-cd": Layout(folders=(("A", "B", "label"),)),
    # open-cd's layout first, then the DSQNet authors' re-organisation.
    "s2looking": Layout(folders=(("Image1", "Image2", "label"), ("A", "B", "OUT"))),
    "svcd": Layout(folders=(("A", "B", "OUT"),)),
    # DSIFN masks are 0/255 on disk; the reference forgets to binarise them, we do not.
    "dsifn": Layout(folders=(("t1", "t2", "mask"),)),
    "generic": Layout(folders=(("A", "B", "label"),), labels="auto", splits=False),
}


@dataclass(frozen=True)
class Sample:
    name: str
    before: Path
    after: Path
    label: Path | None


def find_samples(root: str | Path, layout: str = "generic", split: str | None = None,
                 list_file: str | Path | None = None, require_labels: bool = True) -> list[Sample]:
    """All (before, after, label) triples of one split, sorted by name, checked for completeness."""
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r}; known: {', '.join(sorted(LAYOUTS))}")
    spec = LAYOUTS[layout]
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    base = root / split if split and (spec.splits or (root / split).is_dir()) else root
    for before_dir, after_dir, label_dir in spec.folders:
        if (base / before_dir).is_dir():
            break
    else:
        expected = " or ".join(f"{base}/{a}/" for a, _, _ in spec.folders)
        raise DatasetError(f"no {layout} images found: expected {expected} (layout {layout!r}, split {split!r})")

    before, after = _images(base / before_dir), _images(base / after_dir)
    labels = _images(base / label_dir) if (base / label_dir).is_dir() else {}
    list_path = Path(list_file) if list_file else _default_list(root, split)
    stems = _stems_from_list(list_path, before) if list_path else sorted(before)
    problems = [f"{before[s]} has no partner in {base / after_dir}/" for s in stems if s not in after]
    if not list_path:
        problems += [f"{after[s]} has no partner in {base / before_dir}/" for s in sorted(set(after) - set(before))]
    if require_labels and not (base / label_dir).is_dir():
        raise DatasetError(f"{base} has no {label_dir}/ folder: the labels go there, one per image of {before_dir}/ "
                           f"with the same name (layout {layout!r})")
    if require_labels:
        problems += [f"{before[s]} has no label in {base / label_dir}/" for s in stems if s not in labels]
    if problems:
        raise DatasetError(f"{len(problems)} problem(s) in {base}: {_some(problems)}")
    if not stems:
        raise DatasetError(f"no images in {base / before_dir}/ (suffixes {', '.join(IMAGE_SUFFIXES)})")
    samples = [Sample(s, before[s], after[s], labels.get(s)) for s in stems]
    check_sizes(samples)
    return samples


def check_sizes(samples: list[Sample]) -> None:
    """Every file opens and the three of a sample share one size (headers only, no decoding)."""
    problems = []
    for sample in samples:
        sizes = {}
        for path in (sample.before, sample.after, sample.label):
            if path is None:
                continue
            try:
                with Image.open(path) as image:
                    sizes[path] = image.size
            except (OSError, UnidentifiedImageError) as err:
                problems.append(f"{path} cannot be read: {err}")
        if len(set(sizes.values())) > 1:
            problems.append(f"{sample.name}: sizes differ: " + ", ".join(f"{p} is {w}x{h}" for p, (w, h) in sizes.items()))
    if problems:
        raise DatasetError(f"{len(problems)} problem(s): {_some(problems)}")


def _some(problems: list[str], shown: int = 5) -> str:
    """The first few problems on one line, and how many more."""
    more = len(problems) - shown
    return "; ".join(problems[:shown]) + (f"; and {more} more" if more > 0 else "")


def _images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"folder {folder} does not exist")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _default_list(root: Path, split: str | None) -> Path | None:
    candidate = root / f"{split}.txt" if split else None
    return candidate if candidate is not None and candidate.is_file() else None


def _stems_from_list(list_file: str | Path, available: dict[str, Path]) -> list[str]:
    stems = [Path(line.strip()).stem for line in Path(list_file).read_text().splitlines() if line.strip()]
    missing = [s for s in stems if s not in available]
    if missing:
        raise DatasetError(f"list file {list_file} names {len(missing)} image(s) that do not exist: {', '.join(missing[:10])}")
    return stems


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image as uint8 (H, W, 3)."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from None


def read_label(path: str | Path, encoding: str) -> np.ndarray:
    """A change label as uint8 (H, W): 0 unchanged, 1 changed, 255 ignored."""
    try:
        with Image.open(path) as image:
            grey = np.array(image.convert("L"))
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(f"cannot read label {path}: {err}") from None
    if encoding == "threshold":
        return (grey >= 128).astype(np.uint8)
    if encoding == "zero-one":
        bad = ~np.isin(grey, (0, 1, IGNORE))
        if bad.any():
            raise DatasetError(f"label {path} has values other than 0, 1 and 255 ({np.unique(grey[bad])[:5].tolist()}...)")
        return grey
    raise DatasetError(f"unknown label encoding {encoding!r}")


def detect_label_encoding(labels: list[Path]) -> str:
    """``zero-one`` if the labels hold the value 1 (then 255 means ignore), else ``threshold``.

    Labels merged from two sources can mix the two: then whichever is guessed, one source's changed
    pixels are read as "ignored" or its ignored ones as changed, and the scores or the training are
    silently wrong. So a set where some labels hold 1 and others hold 255 but no 1 is refused, naming
    both kinds; the user names the encoding where the labels really are 0/1 with ignored pixels."""
    ones, only_255 = [], []
    for path in labels:
        try:
            with Image.open(path) as image:
                grey = np.asarray(image.convert("L"))
        except (OSError, UnidentifiedImageError) as err:
            raise DatasetError(f"cannot read label {path}: {err}") from None
        if (grey == 1).any():
            ones.append(path)
        elif (grey == IGNORE).any():
            only_255.append(path)
    if ones and only_255:
        raise DatasetError(
            f"the labels mix two encodings: {len(ones)} ({_some([str(p) for p in ones], 3)}) hold 1 (0/1 labels, "
            f"where 255 means ignored), {len(only_255)} ({_some([str(p) for p in only_255], 3)}) hold 255 and no 1 "
            "(0/255 labels, where 255 means changed); convert them to one "
            "encoding, or name it: zero-one or threshold (--label-encoding; label_encoding in a flow's parameters or in "
            "a training config's data)")
    return "zero-one" if ones else "threshold"

