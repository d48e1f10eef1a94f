"""``pipelines/export.py`` and exported models in ``pipelines/infer.py``: every model exports, same labels as the
checkpoint on the demo's held-out scene, the card, no training stack at inference, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rasterio
import torch

from pipelines.export import main as export_main
from pipelines.infer import main as infer_main
from rs_deeplab.geo.raster import write_geotiff
from rs_deeplab.inference.runtimes.export import MainLogits, is_exported_model, write_onnx, write_torchscript
from rs_deeplab.inference.runtimes.exported import METADATA_KEY, load_exported
from rs_deeplab.inference.runtimes.trained import TrainedModel
from rs_deeplab.models import MODELS, build_model
from tests.daskkit import subprocess_env

CASES = [(name, head) for name, spec in MODELS.items() for head in spec.heads]
TRAINING_STACK = ("rs_deeplab.training", "albumentations")
"""Prefixes of the modules inference must not import (the whole training package)."""


def small_backbone(name: str) -> str:
    backbones = MODELS[name].backbones
    return "resnet18" if "resnet18" in backbones else backbones[0]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize(("name", "head"), CASES, ids=[f"{n}-{h}" for n, h in CASES])
def test_every_model_exports_with_dynamic_batch_and_window(name: str, head: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, in_channels=2, backbone=small_backbone(name), head=head).eval()
    wrapper = MainLogits(model).eval()
    onnx_path, ts_path = tmp_path / "m.onnx", tmp_path / "m.ts"
    write_onnx(wrapper, torch.zeros(1, 2, 64, 64), onnx_path, 17, "{}")
    write_torchscript(wrapper, torch.zeros(1, 2, 64, 64), ts_path, "{}")
    proto = onnx.load(str(onnx_path), load_external_data=False)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3]  # batch, height and width are symbolic
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(ts_path))
    for shape in ((2, 2, 40, 56), (1, 2, 72, 48)):  # neither is the export's 64×64
        x = torch.randn(*shape)
        with torch.no_grad():
            want = model(x).numpy()
            traced = scripted(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == want.shape == (shape[0], 3, *shape[2:])
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(traced, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_card_carries_what_inference_needs(demo_run: dict[str, Path]) -> None:
    proto = onnx.load(str(demo_run["onnx"]), load_external_data=False)
    card = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    assert card["format"] == 1 and card["in_channels"] == 4 and card["output_stride"] == 16
    assert card["class_names"][:2] == ["impervious_surface", "building"] and len(card["class_colours"]) >= 6
    assert len(card["mean"]) == len(card["std"]) == 4 and card["gsd"] == pytest.approx(0.25)
    assert card["window"] == {"size": 128, "stride": 64} and "output_stride" not in card["infer"]
    assert "bands" in card and "band_names" in card
    _, ts_info = load_exported(demo_run["torchscript"], torch.device("cpu"))
    _, onnx_info = load_exported(demo_run["onnx"], torch.device("cpu"))
    pt_info = TrainedModel(demo_run["checkpoint"]).load(torch.device("cpu")).card
    for info in (ts_info, onnx_info):
        assert (info.class_names, info.colormap, info.mean, info.std) == (
            pt_info.class_names,
            pt_info.colormap,
            pt_info.mean,
            pt_info.std,
        )
        assert (info.bands, info.band_names, info.gsd, info.in_channels) == (
            pt_info.bands,
            pt_info.band_names,
            pt_info.gsd,
            pt_info.in_channels,
        )


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


@pytest.mark.slow
def test_exported_models_give_the_checkpoints_labels_on_the_held_out_scene(
    demo_run: dict[str, Path], tmp_path: Path
) -> None:
    scene = demo_run["scene"]
    labels = {}
    runs = {
        "checkpoint": (demo_run["checkpoint"], ["--runtime", "torch"]),
        "onnx": (demo_run["onnx"], []),
        "torchscript": (demo_run["torchscript"], []),
        "auto": (demo_run["checkpoint"], []),
    }  # the default: the checkpoint through ONNX Runtime
    for kind, (model, extra) in runs.items():
        out = tmp_path / f"{kind}.gpkg"
        args = [str(scene), "--checkpoint", str(model), "--out", str(out), "--probs", "-q", *extra]
        assert infer_main(args) == 0, kind
        labels[kind] = read(tmp_path / f"{kind}.tif")[0]
        assert (tmp_path / f"{kind}.gpkg").is_file()
    with rasterio.open(tmp_path / "auto.tif") as ds:
        assert json.loads(ds.tags()["RS_DEEPLAB_INFERENCE"])["model"].endswith(":onnx-fp32")
    probs = read(tmp_path / "checkpoint_probs.tif").astype(int)  # torch's blended probabilities, 0-255
    top2 = np.sort(probs, axis=0)[-2:]
    for kind in ("onnx", "torchscript", "auto"):
        differ = labels[kind] != labels["checkpoint"]
        # the tolerance: >= 99.9% equal, and differences only at ties (top-2 probabilities within one 1/255 step)
        assert differ.sum() <= differ.size // 1000, (kind, int(differ.sum()))
        assert np.all(top2[1][differ] - top2[0][differ] <= 1), kind
        print(f"{kind}: {int(differ.sum())} of {differ.size} labels differ from the checkpoint's (ties)")


def test_resume_fingerprint_names_the_exported_file(demo_run: dict[str, Path], tmp_path: Path) -> None:
    onnx_model = TrainedModel(demo_run["onnx"])
    assert onnx_model.fingerprint() != TrainedModel(demo_run["checkpoint"]).fingerprint()
    copy = tmp_path / "copy.onnx"
    shutil.copy(demo_run["onnx"], copy)
    assert TrainedModel(copy).fingerprint() != onnx_model.fingerprint()
    scene, out = demo_run["scene"], tmp_path / "a.tif"
    assert infer_main([str(scene), "--checkpoint", str(copy), "--out", str(out), "-q"]) == 0
    first = out.stat().st_mtime_ns
    assert infer_main([str(scene), "--checkpoint", str(copy), "--out", str(out), "-q"]) == 0
    assert out.stat().st_mtime_ns == first  # finished with this model: nothing to redo
    os.utime(copy, ns=(first + 10**9, first + 10**9))  # another export under the same name: computed again
    assert infer_main([str(scene), "--checkpoint", str(copy), "--out", str(out), "-q"]) == 0
    assert out.stat().st_mtime_ns != first


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_inference_with_an_exported_model_imports_no_training_stack(demo_run: dict[str, Path], tmp_path: Path) -> None:
    stack = repr(TRAINING_STACK)
    code = (
        f"import sys, rs_deeplab.inference\nbare = [m for m in sys.modules if m.startswith({stack})]\n"
        "from pipelines.infer import main\n"
        f"rc = main([{str(demo_run['scene'])!r}, '--checkpoint', {str(demo_run['onnx'])!r}, '--out', 'x.gpkg', "
        f"'-q'])\nprint(bare, rc, [m for m in sys.modules if m.startswith({stack})], 'onnxruntime' in sys.modules)"
    )
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[-2] == "[] 0 [] True", proc.stdout
    assert (tmp_path / "x.tif").is_file() and (tmp_path / "x.gpkg").is_file()


@pytest.mark.slow
def test_missing_onnxruntime_is_one_line_naming_the_extra(demo_run: dict[str, Path], tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from pipelines.export import main as export\nfrom pipelines.infer import main as infer\n"
        f"a = infer([{str(demo_run['scene'])!r}, '--checkpoint', {str(demo_run['onnx'])!r}, '--out', 'x.tif'])\n"
        "print('---', file=sys.stderr)\n"
        f"b = export([{str(demo_run['checkpoint'])!r}, '--out', 'y.onnx'])\nprint(a, b)"
    )
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "2 2", proc.stderr
    for err in proc.stderr.split("---\n"):  # each: one line naming the extra
        assert err.count("\n") == 1 and "pip install onnxruntime onnx" in err, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    demo_run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ck, scene = str(demo_run["checkpoint"]), str(demo_run["scene"])
    foreign = tmp_path / "foreign.onnx"  # an ONNX model, but not one of ours
    write_onnx(torch.nn.Conv2d(4, 6, 1).eval(), torch.zeros(1, 4, 8, 8), foreign, 17, "")
    proto = onnx.load(str(foreign))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    rgb = tmp_path / "rgb.tif"
    write_geotiff(
        rgb,
        np.zeros((3, 40, 40), np.uint8),
        crs="EPSG:32633",
        transform=rasterio.Affine(0.25, 0, 368_000, 0, -0.25, 5_808_000),
    )
    (tmp_path / "model.h5").write_bytes(b"weights")
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    (tmp_path / "notes.onnx").write_text("my notes, not a model\n")
    (tmp_path / "notes.ts").write_text("const x = 1;\n")  # a TypeScript file
    onnx_model = str(demo_run["onnx"])
    (tmp_path / "dir.onnx").mkdir()
    infer_cases = [
        ([scene, "--checkpoint", str(foreign), "--out", "x.tif"], "has no rs_deeplab metadata"),
        ([scene, "--checkpoint", str(tmp_path / "broken.onnx"), "--out", "x.tif"], "not a readable ONNX model"),
        ([str(rgb), "--checkpoint", onnx_model, "--out", "x.tif"], "has 3 bands but the model was trained on 4"),
        ([scene, "--checkpoint", str(tmp_path / "model.h5"), "--out", "x.tif"], "neither a training checkpoint"),
        ([scene, "--checkpoint", onnx_model, "--out", "x.tif", "--output-stride", "8"], "is baked in"),
        ([scene, "--checkpoint", ck, "--out", "x.tif", "--int8", "--runtime", "torch"], "drop --runtime torch"),
        ([scene, "--checkpoint", onnx_model, "--out", "x.tif", "--runtime", "torch"], "is an exported model"),
        ([scene, "--checkpoint", onnx_model, "--out", "x.tif", "--int8"], "pass the training checkpoint (.pt)"),
    ]
    export_cases = [
        ([ck, "--out", str(tmp_path / "m.pt")], "write a .onnx (ONNX) or .ts (TorchScript) file"),
        ([ck, "--out", str(tmp_path / "m.onnx"), "--format", "torchscript"], "use --out"),
        ([ck, "--out", str(tmp_path / "nowhere" / "m.onnx")], "does not exist; create it first"),
        ([ck, "--out", "/proc/m.onnx"], "cannot write there"),  # even root cannot
        ([ck, "--out", str(tmp_path / "rgb.tif" / "m.onnx")], "does not exist; create it first"),
        ([ck, "--out", str(tmp_path / "dir.onnx")], "cannot write there (a folder)"),
        ([onnx_model, "--out", str(tmp_path / "m.ts")], "is already an exported model"),
        ([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx")], "checkpoint not found"),
        ([ck, "--out", str(tmp_path / "m.onnx"), "--opset", "13"], "opset 17 or newer"),
        ([ck, "--out", str(tmp_path / "notes.onnx")], "exists and is not an ONNX model; remove it"),
        ([ck, "--out", str(tmp_path / "broken.onnx")], "exists and is not an ONNX model"),
        ([ck, "--out", str(tmp_path / "notes.ts")], "exists and is not a TorchScript model"),
    ]
    monkeypatch.chdir(tmp_path)
    for main, cases in ((infer_main, infer_cases), (export_main, export_cases)):
        for args, message in cases:
            capsys.readouterr()
            assert main(args) == 2, args
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and message in err, (args, err)
    names = sorted(p.name for p in tmp_path.rglob("*"))
    assert names == ["broken.onnx", "dir.onnx", "foreign.onnx", "model.h5", "notes.onnx", "notes.ts", "rgb.tif"]
    assert (tmp_path / "notes.onnx").read_text() == "my notes, not a model\n"
    # a model (any project's) is replaced as before; anything else with --force
    assert export_main([ck, "--out", str(foreign), "-q"]) == 0 and is_exported_model(foreign, "onnx")
    assert export_main([ck, "--out", str(tmp_path / "notes.ts"), "--force", "-q"]) == 0
    assert is_exported_model(tmp_path / "notes.ts", "torchscript")


@pytest.mark.slow
def test_dask_workers_load_the_exported_model(demo_run: dict[str, Path], tmp_path: Path, dask_address: str) -> None:
    scene, model = str(demo_run["scene"]), str(demo_run["onnx"])
    twin = str(shutil.copy(scene, tmp_path / "twin.tif"))  # a second scene: one job, one stream of tasks for both
    args = [scene, twin, "--checkpoint", model, "--out", str(tmp_path / "d.tif"), "--probs", "-q", "--separate"]
    assert infer_main([*args, "--scheduler", dask_address]) == 0
    assert infer_main([scene, "--checkpoint", model, "--out", str(tmp_path / "l.tif"), "--probs", "-q"]) == 0
    local = read(tmp_path / "l_probs.tif").astype(int)
    for name in (Path(scene).stem, "twin"):
        remote = read(tmp_path / f"d_{name}_probs.tif").astype(int)
        assert np.abs(local - remote).max() <= 1  # one thread there, two here: float sums may differ in the last bit
        differ = read(tmp_path / "l.tif")[0] != read(tmp_path / f"d_{name}.tif")[0]
        top2 = np.sort(local, axis=0)[-2:]
        assert differ.mean() < 0.001 and (top2[1] - top2[0] <= 1)[differ].all()


@pytest.mark.slow
def test_output_stride_is_baked_in_at_export(demo_run: dict[str, Path], tmp_path: Path) -> None:
    ck, scene, model = str(demo_run["checkpoint"]), str(demo_run["scene"]), tmp_path / "os8.onnx"
    assert export_main([ck, "--out", str(model), "--output-stride", "8", "-q"]) == 0
    card = TrainedModel(model).load(torch.device("cpu")).card
    assert card.architecture.output_stride == 8
    assert infer_main([scene, "--checkpoint", str(model), "--out", str(tmp_path / "onnx8.tif"), "-q"]) == 0
    args = [scene, "--checkpoint", ck, "--output-stride", "8", "--probs", "-q", "--runtime", "torch"]
    assert infer_main([*args, "--out", str(tmp_path / "pt8.tif")]) == 0
    assert infer_main([scene, "--checkpoint", ck, "--out", str(tmp_path / "pt16.tif"), "-q", "--runtime", "torch"]) == 0
    pt8, onnx8 = read(tmp_path / "pt8.tif")[0], read(tmp_path / "onnx8.tif")[0]
    assert not np.array_equal(pt8, read(tmp_path / "pt16.tif")[0])  # the stride changes the labels
    differ = pt8 != onnx8
    top2 = np.sort(read(tmp_path / "pt8_probs.tif").astype(int), axis=0)[-2:]
    assert differ.mean() < 0.001 and (top2[1] - top2[0] <= 1)[differ].all()
