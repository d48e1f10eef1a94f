"""``weights: imagenet``: torchvision's files through torch's hub cache, offline when cached, one line when not.

No test touches the internet: every test runs with a temporary ``TORCH_HOME`` and with the HTTP(S) proxy set to a
closed port on 127.0.0.1, so a download attempt of torchvision's URL is refused at once (and makes a test that
expects the cache to be used fail). The cached files are generated state dicts saved under torchvision's names.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import urllib.request
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torchvision.models import resnet18

from pipelines import train as train_cli
from rs_deeplab.cli.errors import CheckpointError, InputError
from rs_deeplab.config.schema import config_to_dict, dump_config, load_config
from rs_deeplab.models import MODELS, build_model
from rs_deeplab.models.deeplab_v1 import DeepLabV1
from rs_deeplab.models.weights import IMAGENET_WEIGHTS, download_weights, imagenet_source, resolve_weights
from rs_deeplab.training.experiment import train_experiment
from tests.trainkit import make_tiles, write_config

R18_FILE = "resnet18-f37072fd.pth"
R18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
State = dict[str, torch.Tensor]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def forget_urllib_opener() -> Iterator[None]:
    """urlopen builds its opener once, with the proxies of that moment: torch.hub's download through the closed
    proxy below must not leave later tests of the session (the loopback servers of test_remote.py) behind it."""
    urllib.request.install_opener(None)
    yield
    urllib.request.install_opener(None)


@pytest.fixture(autouse=True)
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache under a temporary ``TORCH_HOME``, and every proxy pointing at a closed loopback port."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy)
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    folder = Path(torch.hub.get_dir())
    assert folder == tmp_path / "torch_home" / "hub", "torch.hub.set_dir was called: TORCH_HOME is ignored"
    return folder / "checkpoints"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def r18_state() -> State:
    torch.manual_seed(11)
    return resnet18(weights=None).state_dict()


def cache(hub: Path, name: str, state: State) -> Path:
    hub.mkdir(parents=True, exist_ok=True)
    torch.save(state, hub / name)
    return hub / name


def test_every_backbone_maps_to_torchvisions_v1_file(hub: Path) -> None:
    backbones = {b for spec in MODELS.values() for b in spec.backbones}
    assert backbones <= set(IMAGENET_WEIGHTS)
    assert all(IMAGENET_WEIGHTS[b].name == "IMAGENET1K_V1" for b in backbones)
    assert imagenet_source("resnet18") == (R18_URL, hub / R18_FILE)
    assert imagenet_source("resnet50")[1].name == "resnet50-0676ba61.pth"  # V1, not V2's resnet50-11ad3fa6
    assert imagenet_source("vgg16")[1].name == "vgg16-397923af.pth"


@pytest.mark.parametrize("name", ["deeplabv2", "deeplabv3", "deeplabv3plus"])
def test_cached_file_loads_offline_and_adapts_to_four_bands(name: str, hub: Path, r18_state: State) -> None:
    cache(hub, R18_FILE, r18_state)
    model = build_model(name, num_classes=3, in_channels=4, backbone="resnet18", weights="imagenet")
    assert torch.equal(model.encoder.layer4[1].conv2.weight, r18_state["layer4.1.conv2.weight"])
    conv1 = model.encoder.conv1.weight.detach()
    assert conv1.shape == (64, 4, 7, 7)
    assert torch.equal(conv1[:, :3], r18_state["conv1.weight"])  # RGB kernels kept
    torch.testing.assert_close(conv1[:, 3], r18_state["conv1.weight"].mean(dim=1))  # extra band: mean kernel
    assert sorted(p.name for p in hub.iterdir()) == [R18_FILE]  # nothing downloaded or left beside it


def test_vgg16_file_loads_into_deeplab_v1(hub: Path) -> None:
    torch.manual_seed(5)
    features = DeepLabV1(num_classes=2).encoder.state_dict()
    cache(hub, "vgg16-397923af.pth", {f"features.{k}": v for k, v in features.items()})
    model = build_model("deeplabv1", num_classes=2, weights="imagenet")
    assert torch.equal(model.encoder.state_dict()["28.weight"], features["28.weight"])


def test_neither_cached_nor_downloadable_is_one_line_naming_file_url_and_folder(hub: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        build_model("deeplabv3plus", num_classes=2, backbone="resnet18", weights="imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{R18_FILE}: not in the torch hub cache and the download failed (")
    assert f"download {R18_URL} and put it in {hub}/" in message
    assert not any(hub.iterdir())  # no partial download left behind


def test_download_to_a_closed_loopback_port_fails_cleanly(tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "tiny-0123abcd.pth"
    with pytest.raises(CheckpointError, match=r"^tiny-0123abcd\.pth: .*download failed .*refused") as info:
        download_weights(f"http://127.0.0.1:{closed_port()}/tiny-0123abcd.pth", dest)
    assert "\n" not in str(info.value)
    assert f"put it in {dest.parent}/" in str(info.value) and not any(dest.parent.iterdir())


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A local HTTP server (base URL) over a folder; the loopback address bypasses the closed proxy."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


def test_download_fills_the_cache_and_checks_the_hash(served: tuple[str, Path], tmp_path: Path) -> None:
    base, folder = served
    torch.save({"w": torch.arange(6.0)}, folder / "blob.pth")
    digest = hashlib.sha256((folder / "blob.pth").read_bytes()).hexdigest()
    (folder / f"tiny-{digest[:8]}.pth").write_bytes((folder / "blob.pth").read_bytes())
    dest = tmp_path / "hub" / "checkpoints" / f"tiny-{digest[:8]}.pth"
    download_weights(f"{base}/{dest.name}", dest)
    assert torch.equal(torch.load(dest, weights_only=True)["w"], torch.arange(6.0))
    wrong = dest.with_name("tiny-deadbeef.pth")
    (folder / wrong.name).write_bytes((folder / "blob.pth").read_bytes())
    with pytest.raises(CheckpointError, match=r"^tiny-deadbeef\.pth: .*invalid hash value"):
        download_weights(f"{base}/{wrong.name}", wrong)
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]


def test_backbone_without_imagenet_weights_is_one_line() -> None:
    with pytest.raises(InputError) as info:
        resolve_weights("imagenet", "mobilenet_v3_large")
    message = str(info.value)
    assert "no ImageNet weights for backbone 'mobilenet_v3_large'" in message and "resnet18" in message
    assert "\n" not in message
    with pytest.raises(InputError, match=r"backbone 'resnet200' is not supported; choose one of resnet101"):
        build_model("deeplabv3", num_classes=2, backbone="resnet200", weights="imagenet")


def test_local_path_still_works(tmp_path: Path, r18_state: State) -> None:
    path = tmp_path / "imagenet"  # a file named like the keyword is a path when given as one
    torch.save(r18_state, path)
    assert resolve_weights(path, "resnet18") == path
    model = build_model("deeplabv3", num_classes=2, backbone="resnet18", weights=path)
    assert torch.equal(model.encoder.layer1[0].conv1.weight, r18_state["layer1.0.conv1.weight"])
    assert resolve_weights(None, "resnet18") is None
    with pytest.raises(CheckpointError, match=r"nope\.pth: weights file not found"):
        resolve_weights(tmp_path / "nope.pth", "resnet18")


def test_config_accepts_imagenet_and_keeps_paths(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("model: {weights: imagenet, backbone: resnet50}\n")
    cfg = load_config(path)
    assert cfg.model.weights == "imagenet"
    again = load_config(dump_config(cfg, tmp_path / "dumped.yaml"))
    assert again.model.weights == "imagenet" and config_to_dict(again)["model"]["weights"] == "imagenet"
    assert load_config(path, ["model.weights=w/r50.pth"]).model.weights == Path("w/r50.pth")
    assert load_config(path, ["model.weights=null"]).model.weights is None


# ---- pipelines/train.py end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiles(tmp_path_factory.mktemp("data"))


def train(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``train.py CONFIG --quiet`` in this process (with the fixtures' ``TORCH_HOME`` and proxies): its exit status
    and what it wrote to stderr."""
    code = train_cli.main([str(config), "--quiet"])
    return code, capsys.readouterr().err


def imagenet_config(tmp_path: Path, tiles: Path) -> Path:
    return write_config(
        tmp_path / "exp.yaml",
        tiles,
        tmp_path / "run",
        model={"weights": "imagenet", "backbone": "resnet18"},
        optimizer={"lr": 1e-12},  # the weights stay the loaded ones to within rounding
        schedule={"iterations": 2},
        train={"device": "cpu", "eval_every": 2, "checkpoint_every": 2},
    )


@pytest.mark.slow
def test_train_cli_reads_the_cached_file(
    tmp_path: Path, tiles: Path, hub: Path, r18_state: State, capsys: pytest.CaptureFixture[str]
) -> None:
    cache(hub, R18_FILE, r18_state)
    code, err = train(imagenet_config(tmp_path, tiles), capsys)
    assert code == 0, err
    state = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)["model"]
    torch.testing.assert_close(state["encoder.layer3.0.conv1.weight"], r18_state["layer3.0.conv1.weight"])
    conv1 = state["encoder.conv1.weight"]  # the tiles have 4 bands
    torch.testing.assert_close(conv1[:, 3], r18_state["conv1.weight"].mean(dim=1))
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["weights"] == "imagenet"


@pytest.mark.slow
def test_train_cli_without_the_file_exits_2_with_one_line(
    tmp_path: Path, tiles: Path, hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = train(imagenet_config(tmp_path, tiles), capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and R18_FILE in lines[0] and R18_URL in lines[0] and str(hub) in lines[0]
    assert not (tmp_path / "run").exists()  # nothing written


def test_missing_weights_are_reported_before_any_data_is_read(tmp_path: Path, hub: Path) -> None:
    config = write_config(
        tmp_path / "exp.yaml",
        tmp_path / "no_data",
        tmp_path / "run",
        model={"weights": "imagenet"},
        train={"device": "cpu"},
    )
    # the weights are resolved before the data: the missing data folder would otherwise be reported first
    with pytest.raises(CheckpointError, match=r"resnet18-f37072fd\.pth: not in the torch hub cache"):
        train_experiment(load_config(config))
    assert not (tmp_path / "run").exists()
