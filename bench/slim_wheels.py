"""Make wheels smaller without changing what they do: drop named folders, strip debug info from ELF files.

The GPU device machine takes at most 64 MiB of working tree and wheels per call
(bench/build_device_wheels.sh). Many manylinux wheels ship their Cython extensions with DWARF
debug sections that only a debugger reads, and prefect ships two builds of its web UI, which a
flow run with ``PREFECT_UI_ENABLED=false`` never serves. This rewrites such a wheel in place:

- every member under a ``--drop`` prefix (e.g. ``prefect/server/ui/``) is left out;
- every ELF file (``.so``, ``.so.N``) is passed through ``strip --strip-debug``, which removes the
  debug sections only: the code, the symbol tables and the dynamic section stay as they were;
- ``RECORD`` is written again with the new hashes and sizes, so ``pip install`` accepts the wheel;
- with ``--store``, members are stored uncompressed, for an archive that compresses the wheels
  together: for this project's device wheels, xz over the stored wheels made 42 MiB where the
  same wheels deflated made 70 MiB (shared libraries compress far better with LZMA).

The rewrite is deterministic (members in their original order, fixed timestamps), so the same
input wheels and the same ``strip`` give the same bytes.

    python bench/slim_wheels.py .device-wheels/*.whl --drop prefect/server/ui/ --drop prefect/server/ui-v2/
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def strip_debug(data: bytes, strip: str) -> bytes:
    """``data`` (an ELF file) without its debug sections; unchanged when that is not smaller."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "member"
        path.write_bytes(data)
        subprocess.run([strip, "--strip-debug", str(path)], check=True)
        stripped = path.read_bytes()
    return stripped if len(stripped) < len(data) else data


def slim(wheel: Path, drop: list[str], strip: str | None, store: bool = False) -> tuple[int, int, bool]:
    """Rewrite ``wheel`` in place; returns its old and new size in bytes, and whether any member changed."""
    before = wheel.stat().st_size
    with zipfile.ZipFile(wheel) as source:
        members = [info for info in source.infolist() if not any(info.filename.startswith(p) for p in drop)]
        record = next(info.filename for info in members if info.filename.endswith(".dist-info/RECORD"))
        contents = {}
        for info in members:
            data = source.read(info)
            if strip and not info.is_dir() and data[:4] == ELF_MAGIC:
                data = strip_debug(data, strip)
            contents[info.filename] = data
        changed = len(members) != len(source.infolist()) or any(
            contents[i.filename] != source.read(i) for i in members if i.filename != record)
    if not (changed or store):
        return before, before, False
    lines = [record_line(i.filename, contents[i.filename]) for i in members if i.filename != record and not i.is_dir()]
    contents[record] = ("\n".join([*lines, f"{record},,"]) + "\n").encode()
    tmp = wheel.with_suffix(".slim-tmp")
    method = zipfile.ZIP_STORED if store else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(tmp, "w", method, compresslevel=None if store else 9) as target:
        for info in members:
            out = zipfile.ZipInfo(info.filename, FIXED_TIME)
            out.external_attr, out.compress_type = info.external_attr, method
            target.writestr(out, contents[info.filename])
    os.replace(tmp, wheel)
    return before, wheel.stat().st_size, changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheels", type=Path, nargs="+")
    parser.add_argument("--drop", action="append", default=[], help="leave out members under this prefix")
    parser.add_argument("--no-strip", action="store_true", help="keep ELF files' debug sections")
    parser.add_argument("--store", action="store_true", help="store members uncompressed (for a .tar.xz of wheels)")
    args = parser.parse_args()
    strip = None if args.no_strip else shutil.which("strip")
    if not args.no_strip and strip is None:
        raise SystemExit("`strip` (binutils) is not on PATH: install binutils, or pass --no-strip "
                         "(the wheels then stay larger)")
    total_before = total_after = 0
    for wheel in args.wheels:
        before, after, changed = slim(wheel, args.drop, strip, args.store)
        total_before, total_after = total_before + before, total_after + after
        if changed:
            print(f"{wheel.name}: {before / 2**20:.2f} -> {after / 2**20:.2f} MiB")
    print(f"{len(args.wheels)} wheels: {total_before / 2**20:.1f} -> {total_after / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
