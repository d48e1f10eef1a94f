#!/usr/bin/env bash
# Wheels that the GPU checks need on a lent GPU machine (Python 3.12 with torch, numpy, opencv, timm, pytest,
# pyyaml, matplotlib, an older typing_extensions... but no rasterio, smp, albumentations, pydantic or dask), at the
# versions of this venv. typing_extensions travels too: the image's is older than the 4.14 pydantic needs.
# Usage: bash bench/gpu_wheels.sh  -> .whl/ (ignored by git); then carry .whl in the device run and run there
#   python3 bench/device_check.py --out $OUT
# which installs them offline (pip --no-index --no-deps --target) and puts them on every child's PYTHONPATH.
# No pyogrio/geopandas/shapely: rasterio alone is 39 MB and a call carries 64 MiB; the GPU path never imports them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NAMES="rasterio affine cligj click-plugins segmentation_models_pytorch albumentations albucore pydantic pydantic_core
annotated-types typing-inspection typing_extensions stringzilla simsimd dask distributed partd locket tblib zict
tornado"
pins=()
for name in $NAMES; do
  version=$("$PY" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
  [ -n "$version" ] || { echo "error: $name is not installed in $PY's environment; run make install" >&2; exit 2; }
  pins+=("$name==$version")
done
mkdir -p .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64; do
  platforms+=(--platform "$tag")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${pins[@]}"
# one version of each: an older wheel left from another venv would stop the whole install there
dupes=$(ls .whl/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
[ -z "$dupes" ] || { echo "error: several versions in .whl of: $dupes; empty .whl and run again" >&2; exit 2; }
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$( (git ls-files -z | du -cb --files0-from=- 2>/dev/null || true) | tail -1 | cut -f1)
total=$((wheels + tree))
echo "$(ls .whl/*.whl | wc -l) wheels $((wheels / 1048576)) MiB + tracked tree $((tree / 1048576)) MiB =" \
     "$((total / 1048576)) MiB to carry (limit 60 MiB; a device call carries at most 64 MiB)"
[ "$total" -lt $((60 * 1048576)) ] || { echo "error: too large to carry with the working tree" >&2; exit 1; }
