"""What a tiling run records beside its crops (``tiling.json``): settings and inputs, for resuming and --append."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.raster import atomic_output, open_raster
from rs_deeplab.remote.scenes import is_remote, reads_remote, stat_remote
from rs_deeplab.tiling.crops import (
    IMAGES,
    LABELS,
    CropSettings,
    SceneJob,
    remove_stale_temporaries,
)
from rs_deeplab.tiling.index import read_index
from rs_deeplab.tiling.scenes import Prepared

INDEX_NAME, MANIFEST_NAME = "index.gpkg", "tiling.json"


def build_manifest(settings: CropSettings, jobs: Sequence[SceneJob]) -> dict[str, Any]:
    """Everything that decides the output files, as plain JSON values (written to ``tiling.json``)."""
    manifest = {
        "version": 1,
        "size": settings.size,
        "stride": settings.stride,
        "min_valid": settings.min_valid,
        "compress": settings.compress or "none",
        "scheme": settings.scheme,
        "scenes": [dataclasses.asdict(j) for j in jobs],
    }
    if settings.classes:
        manifest["classes"] = list(settings.classes)
    remote = remote_versions(jobs)
    if remote:
        manifest["remote"] = remote
    result: dict[str, Any] = json.loads(json.dumps(manifest))
    return result


def remote_versions(jobs: Sequence[SceneJob]) -> dict[str, Any]:
    """What the servers report about the run's remote images and labels (size, ETag, Last-Modified), and the
    content hash of local VRTs with remote sources (a STAC Item's, which records its assets' versions): a scene
    replaced on its server makes the manifest differ, so its old crops are not resumed.
    """  # noqa: D205
    versions: dict[str, Any] = {}
    for job in jobs:
        for path in (job.image, None if job.label is None else job.label.path):
            if path is None or path in versions or not reads_remote(path):
                continue
            if is_remote(path):
                versions[path] = stat_remote(path).fingerprint()
            else:
                versions[path] = {"vrt_sha1": hashlib.sha1(Path(path).read_bytes()).hexdigest()}
    return versions


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The settings an earlier run recorded in ``out`` (None: no run yet).

    Raises:
        InputError: The record is damaged (not JSON, not an object of settings, unreadable): the crops beside
            it cannot be trusted to match any settings, so the user is told to start that folder over.
    """
    path = out / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
        problem = None if isinstance(old, dict) and "size" in old and "scenes" in old else "not a tiling record"
    except (OSError, ValueError) as exc:
        problem = getattr(exc, "strerror", None) or f"not valid JSON: {str(exc).split(':')[0]}"
    if problem is not None:
        raise InputError(
            f"{path}: is damaged ({problem}); it records how the crops in {out} were cut, so "
            "delete that folder and tile again, or choose another --out"
        )
    result: dict[str, Any] = old
    return result


def check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Refuse to mix crops of a different tiling run into ``out``."""
    old = read_manifest(out)
    if old is None:
        return
    diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
    if diff:
        raise InputError(
            f"{out} holds crops of a different tiling run ({', '.join(diff)} differ); "
            "choose another --out, delete that folder, or add scenes to it with --append"
        )


def prepare_output(out: Path, manifest: dict[str, Any], labelled: bool) -> None:
    """Create the output folders, drop a killed run's temporary files and record this run's settings."""
    for folder in (out, out / IMAGES, *([out / LABELS] if labelled else [])):
        folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    with atomic_output(out / MANIFEST_NAME) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def check_append(out: Path, manifest: dict[str, Any], prepared: Prepared) -> dict[str, Any]:
    """The manifest of ``out`` with this run's scenes added; refuses other settings, classes, bands or dtype."""
    old = read_manifest(out)
    if old is None:
        return manifest
    diff = sorted(k for k in (set(old) | set(manifest)) - {"scenes", "remote"} if old.get(k) != manifest.get(k))
    if diff:
        was = ", ".join(f"{k} {old.get(k)} here vs {manifest.get(k)}" for k in diff)
        raise InputError(f"cannot append to {out}: its crops were cut with other settings ({was}); use another --out")
    previous = {s["key"]: s for s in old.get("scenes", [])}
    if previous and any(s["label"] for s in previous.values()) != any(j.label for j in prepared.jobs):
        raise InputError(f"cannot append to {out}: its scenes and these differ in having labels; use another --out")
    for scene in manifest["scenes"]:
        if scene["key"] in previous and previous[scene["key"]] != scene:
            raise InputError(
                f"cannot append to {out}: it already holds a scene {scene['key']} ({previous[scene['key']]['image']}); "
                "rename the new scene's file"
            )
    index = out / INDEX_NAME
    if index.exists():
        tiles, _ = read_index(index)
        if len(tiles):
            with open_raster(out / tiles["image"].iloc[0]) as crop:
                have = (crop.count, str(crop.dtypes[0]))
                georeferenced = crop.crs is not None
            _check_append_crs(out, georeferenced, prepared)
            for key, bands in prepared.bands.items():
                if bands != have:
                    raise InputError(
                        f"cannot append to {out}: its crops have {have[0]} {have[1]} bands, scene {key} has "
                        f"{bands[0]} {bands[1]}; use another --out"
                    )
    merged = {**previous, **{s["key"]: s for s in manifest["scenes"]}}
    result = {**manifest, "scenes": [merged[k] for k in sorted(merged)]}
    remote = _merged_remote(out, old.get("remote", {}), manifest.get("remote", {}))
    if remote:
        result["remote"] = remote
    return result


def _check_append_crs(out: Path, georeferenced: bool, prepared: Prepared) -> None:
    """Refuse scenes without a CRS onto georeferenced crops, or the other way round (one run refuses the mix too)."""
    odd = sorted(key for key, crs in prepared.crss.items() if (crs is not None) != georeferenced)
    if odd:
        have, new = ("georeferenced", "no CRS") if georeferenced else ("without a CRS", "one")
        raise InputError(
            f"cannot append to {out}: its crops are {have} and scene {odd[0]} has {new}; "
            "tile it into another --out (or give the scene a CRS)"
        )


def _merged_remote(out: Path, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Remote versions of an appended run; a remote scene that changed on its server since its crops were cut is
    refused (its finished rows would be resumed from the old version).
    """  # noqa: D205
    changed = [path for path in new if path in old and old[path] != new[path]]
    if changed:
        raise InputError(
            f"cannot append to {out}: {changed[0]} changed on its server since its crops were cut; use another --out"
        )
    return {**old, **new}
