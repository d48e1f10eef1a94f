"""Dataset readers on real files: crops written by a real tiling run, and generated VOC and Cityscapes folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from PIL import Image

from rs_deeplab.cli.errors import InputError
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.sample.cityscapes import write_cityscapes
from rs_deeplab.sample.voc import write_voc
from rs_deeplab.tiling import SceneSpec, read_index, tile_scenes
from rs_deeplab.training.datasets import CityscapesSource, VOCSource
from rs_deeplab.training.datasets.tiles import TileIndexSource

TRANSFORM = Affine(0.5, 0, 500_000, 0, -0.5, 6_000_000)
BANDS = ("red", "green", "blue", "nir")
SIZE = 32


def scene(seed: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Four uint16 bands and class ids 0..2 in 8 px blocks, with an unlabelled (255) strip."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 3, (shape[0] // 8 + 1, shape[1] // 8 + 1))
    labels = np.kron(blocks, np.ones((8, 8), np.int64))[: shape[0], : shape[1]].astype(np.uint8)
    labels[:, :5] = 255
    image = rng.integers(0, 4000, (4, *shape)).astype(np.uint16) + 1000 * labels.clip(0, 3)[None].astype(np.uint16)
    return image, labels


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    folder = tmp_path_factory.mktemp("tiles")
    arrays = {"north": scene(1, (80, 72)), "south": scene(2, (64, 96))}
    specs = []
    for split, (name, (image, labels)) in zip(("train", "val"), arrays.items(), strict=True):
        img = write_geotiff(folder / f"{name}.tif", image, crs="EPSG:32633", transform=TRANSFORM, descriptions=BANDS)
        lbl = write_geotiff(folder / f"{name}_label.tif", labels, crs="EPSG:32633", transform=TRANSFORM)
        specs.append(SceneSpec(img, lbl, split))
    tile_scenes(specs, folder / "out", size=SIZE, stride=24, classes=["water", "field", "town"], workers=1, quiet=True)
    return folder / "out", arrays


def test_tile_index_source_reads_the_crops_of_a_real_tiling_run(tiles: tuple[Path, dict]) -> None:
    out, arrays = tiles
    index, _ = read_index(out / "index.gpkg")
    source = TileIndexSource(out, "train")
    rows = index[index.split == "train"]
    assert len(source) == len(rows) > 4
    assert source.class_names == ("water", "field", "town")
    assert source.in_channels() == 4 and source.band_names() == list(BANDS)
    image_full, labels_full = arrays["north"]
    for i, row in enumerate(rows.itertuples()):
        image, label = source.read(i)
        assert image.shape == (4, SIZE, SIZE) and image.dtype == np.uint16  # the scene's bands and dtype
        assert label.shape == (SIZE, SIZE) and label.dtype == np.uint8
        window = (slice(row.row_off, row.row_off + SIZE), slice(row.col_off, row.col_off + SIZE))
        np.testing.assert_array_equal(image, image_full[:, window[0], window[1]])
        np.testing.assert_array_equal(label, labels_full[window])  # 255 stays ignore
        counts = np.bincount(label[label != 255], minlength=3)
        np.testing.assert_array_equal(source.class_counts[i], counts)
    assert any((source.read_label(i) == 255).any() for i in range(len(source)))
    assert [Path(p).name for p in source.scene_images()] == [Path(source.images[0]).name]


def test_band_selection_and_the_other_split(tiles: tuple[Path, dict]) -> None:
    out = tiles[0]
    picked = TileIndexSource(out / "index.gpkg", "val", bands=[4, 1])
    full = TileIndexSource(out, "val")
    assert picked.in_channels() == 2 and picked.band_names() == ["nir", "red"]
    np.testing.assert_array_equal(picked.read_image(0), full.read_image(0)[[3, 0]])
    assert set(picked.scenes) == {"south"}
    with pytest.raises(InputError, match="splits present: train, val"):
        TileIndexSource(out, "test")
    with pytest.raises(InputError, match="has 4 bands"):
        TileIndexSource(out, "val", bands=[5]).read_image(0)


def test_missing_index_names_the_tiler(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"pipelines/tile\.py"):
        TileIndexSource(tmp_path, "train")


def test_voc_source_reads_palette_and_sbd_labels_as_class_indices(tmp_path: Path) -> None:
    base = write_voc(tmp_path / "data", n_train=3, n_val=2, seed=4)
    for root in (base, base.parent, base.parent.parent):  # VOC2012, VOCdevkit or the folder holding it
        assert len(VOCSource(root, "val")) == 2
    plain, aug = VOCSource(tmp_path / "data", "train"), VOCSource(tmp_path / "data", "train_aug")
    assert len(plain.class_names) == 21 and plain.class_names[0] == "background"
    assert set(map(str, plain.images)) < set(map(str, aug.images))  # SBD adds images to the train list
    for i in range(len(plain)):
        image, label = plain.read(i)
        assert image.shape[0] == 3 and image.dtype == np.uint8 and label.ndim == 2  # palette PNG → indices
        assert set(np.unique(label)) <= {*range(21), 255} and (label == 255).any()  # boundaries ignored
        j = aug.images.index(plain.images[i])
        aug_label = aug.read_label(j)
        assert 255 not in aug_label  # SBD labels have no boundary band
        known = label != 255
        np.testing.assert_array_equal(aug_label[known], label[known])
        assert len(np.unique(label[known])) > 1  # objects on a background
    with pytest.raises(InputError, match="splits present"):
        VOCSource(tmp_path / "data", "test")


def test_cityscapes_source_maps_label_ids_to_train_ids(tmp_path: Path) -> None:
    write_cityscapes(tmp_path, per_split=2, size=(64, 128), seed=3)
    source = CityscapesSource(tmp_path, "train")
    assert len(source) == 2 and len(source.class_names) == 19 and len(CityscapesSource(tmp_path, "val")) == 2
    seen = set()
    for i in range(len(source)):
        image, label = source.read(i)
        assert image.shape == (3, 64, 128) and label.shape == (64, 128) and label.dtype == np.uint8
        with Image.open(source.labels[i]) as raw_image:
            raw = np.asarray(raw_image)
        # Cityscapes labelIds: 7 road → 0, 8 sidewalk → 1, 11 building → 2, 26 car → 13; 0 unlabeled, 1 ego → 255
        for label_id, train_id in ((7, 0), (8, 1), (11, 2), (26, 13), (0, 255), (1, 255)):
            if (raw == label_id).any():
                seen.add(label_id)
                assert (label[raw == label_id] == train_id).all(), label_id
        assert set(np.unique(label)) <= {*range(19), 255}
    assert {7, 11, 1} <= seen  # the generated streets have roads, buildings and the ego vehicle
    with pytest.raises(InputError, match="does not exist"):
        CityscapesSource(tmp_path, "test")
