#!/usr/bin/env bash
# Wheels that bench/gpu_check.py needs on a lent GPU machine (Python 3.12 with torch, numpy, opencv, timm, pytest,
# pyyaml, matplotlib... but no rasterio, smp, albumentations, pydantic or dask), at the versions of this venv.
# Usage: bash bench/gpu_wheels.sh  -> .whl/ (ignored by git), then carry .whl in the device run:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site; python3 bench/gpu_check.py
# No pyogrio/geopandas/shapely: rasterio alone is 39 MB and a call carries 64 MiB; the GPU path never imports them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NAMES="rasterio affine cligj click-plugins segmentation_models_pytorch albumentations albucore pydantic pydantic_core
annotated-types typing-inspection stringzilla simsimd dask distributed partd locket tblib zict tornado"
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
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "$(ls .whl/*.whl | wc -l) wheels, $((total / 1048576)) MiB in .whl/ (a device call carries at most 64 MiB)"
[ "$total" -lt $((60 * 1048576)) ] || { echo "error: too large to carry with the working tree" >&2; exit 1; }
