#!/usr/bin/env bash
# Builds the folder of wheels that the GPU device machine lacks, for bench/gpu_check.sh to install
# with `pip install --no-index --no-deps` after one call of the device tool carried it.
#
#   bash bench/build_device_wheels.sh [DIR]      # default DIR: .device-wheels (ignored by git)
#
# The device runs Python 3.12 on x86-64 with torch, torchvision, timm, numpy, scipy, pandas,
# pyarrow, pillow, safetensors and pytest installed (/work/.library/device/KINDS.md) and reaches
# no package index. Everything else the project imports (pyproject.toml: dependencies and the
# `test` extra) is resolved here for Python 3.12, pinned to constraints.txt, and downloaded as
# manylinux x86-64 wheels, then slimmed without changing their code (bench/slim_wheels.py):
# prefect loses its two web UIs (4.8 of its 6.7 MiB; PREFECT_UI_ENABLED=false serves neither),
# and ELF files their debug sections (numcodecs 8.9 -> 1.6 MiB, rasterio 34 -> 24 MiB).
# Deflated, that is still 70 MiB, and a call carries at most 64 MiB of working tree and wheels
# together; so the wheels are stored uncompressed and put in one xz archive, DIR/wheels.tar.xz
# (about 42 MiB), with DIR/MANIFEST listing each wheel's sha256. The script fails when the archive
# is over LIMIT_MIB (default 56). Run time: about 4 minutes of CPU, most of it xz.
#
# Needs network access to the package index, a Python 3.12 for pip (PYTHON=..., else the first
# python3.12 that runs; another Python works but evaluates environment markers for itself),
# binutils' `strip` and xz. The same constraints and tools give the same archive.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mkdir -p "${1:-$ROOT/.device-wheels}" && cd "${1:-$ROOT/.device-wheels}" && pwd)
LIMIT_MIB=${LIMIT_MIB:-56}
# on the device already (their versions there need not match constraints.txt; pluggy is carried:
# prefect needs a newer one than some pytest releases bring), or never imported
# (traced over a bench/pipeline.py run: its process, the Prefect server, the output children):
# geopandas reads and writes files through pyogrio (31 MiB), this project only writes parquet;
# prefect's notification blocks (apprise) and Docker workers are not used
DEVICE_HAS="torch torchvision timm triton numpy scipy pandas pyarrow pillow safetensors pytest iniconfig"
NOT_IMPORTED="pyogrio apprise docker"

find_python() {
    local candidate pyenv
    pyenv=$(ls -d "$HOME"/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1)
    for candidate in "${PYTHON:-}" python3.12 "$pyenv"; do
        if [[ -n "$candidate" ]] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null
        then
            echo "$candidate"
            return
        fi
    done
    echo "no Python 3.12 found: set PYTHON=/path/to/python3.12 (or any Python 3; markers are then its own)" >&2
    exit 1
}
PY=$(find_python)

# the manylinux tags the device's glibc (Ubuntu 24.04: 2.39) accepts; pip matches each tag exactly
PLATFORMS=(--platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
for n in $(seq 5 39); do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 "${PLATFORMS[@]}")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. the project's requirements, less what the device has
"$PY" - "$ROOT/pyproject.toml" $DEVICE_HAS >"$work/requirements.txt" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
skip = {name.lower() for name in sys.argv[2:]}
for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
    if re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower() not in skip:
        print(requirement)
EOF

# 2. their closure for Python 3.12 on x86-64 Linux, pinned by constraints.txt (metadata only, no download)
"$PY" -m pip install --quiet --dry-run --ignore-installed --report "$work/report.json" --target "$work/unused" \
    "${TARGET[@]}" -c "$ROOT/constraints.txt" -r "$work/requirements.txt"

# 3. each package of the closure, but those the device has: name==version, checked against the pins
"$PY" - "$work/report.json" "$ROOT/constraints.txt" $DEVICE_HAS $NOT_IMPORTED >"$work/pins.txt" <<'EOF'
import json, re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
report, constraints, skip = sys.argv[1], sys.argv[2], {norm(n) for n in sys.argv[3:]}
pinned = {norm(name): version for name, version in
          (line.strip().split("==", 1) for line in open(constraints) if "==" in line and not line.startswith("#"))}
unpinned = []
for item in json.load(open(report))["install"]:
    name, version = norm(item["metadata"]["name"]), item["metadata"]["version"]
    if name in skip:
        continue
    if pinned.get(name) != version:
        unpinned.append(f"{name}=={version} (constraints.txt: {pinned.get(name, 'none')})")
    print(f"{name}=={version}")
if unpinned:
    sys.exit("not pinned by constraints.txt, so not reproducible: " + ", ".join(unpinned)
             + "; pin them there (make lock) and run again")
EOF
mkdir -p "$work/wheels"
"$PY" -m pip download --quiet --no-deps "${TARGET[@]}" -d "$work/wheels" -r "$work/pins.txt"

# 4. slimmer wheels, the same code, stored uncompressed and compressed together with xz
"$PY" "$ROOT/bench/slim_wheels.py" "$work/wheels"/*.whl --store --drop prefect/server/ui/ --drop prefect/server/ui-v2/
rm -f "$DIR"/*.whl "$DIR"/wheels.tar.xz "$DIR"/MANIFEST
tar -C "$work/wheels" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - . \
    | xz -9 -T0 >"$DIR/wheels.tar.xz"  # xz's multi-threaded blocks: the same bytes for any thread count
(cd "$work/wheels" && sha256sum *.whl) >"$DIR/MANIFEST"

mib=$(( $(stat -c %s "$DIR/wheels.tar.xz") / 1048576 ))
echo "$(wc -l <"$DIR/MANIFEST") wheels, $(du -sh "$DIR/wheels.tar.xz" | cut -f1) in $DIR/wheels.tar.xz" \
    "(limit ${LIMIT_MIB} MiB)"
if ((mib > LIMIT_MIB)); then
    echo "over ${LIMIT_MIB} MiB: the device takes 64 MiB of working tree and wheels per call" >&2
    exit 1
fi
