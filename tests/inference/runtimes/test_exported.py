"""An ONNX Runtime session asked for CUDA that runs on the CPU: said once under ``auto``, one line under ``cuda``.

The onnxruntime installed here has no CUDA provider, so every session asked for the GPU really runs on the CPU.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from rs_deeplab.cli.errors import InputError
from rs_deeplab.inference.runtimes.exported import CUDA_PROVIDER, OnnxModule, check_cuda_session
from rs_deeplab.inference.runtimes.onnx_cache import _said
from rs_deeplab.inference.runtimes.trained import TrainedModel


def identity_model(path: Path) -> Path:
    """A one-node ONNX model: ``(1, 2, 3, 3)`` float in, the same out."""
    shape = [1, 2, 3, 3]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(autouse=True)
def _fresh_once() -> None:
    """Each test sees its messages as new (say_once remembers them per process)."""
    _said.clear()


def test_a_session_asked_for_cuda_runs_on_the_cpu_here(tmp_path: Path) -> None:
    path = identity_model(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime's own "not in available provider names"
        session = ort.InferenceSession(str(path), providers=[CUDA_PROVIDER, "CPUExecutionProvider"])
    got, available = session.get_providers(), ort.get_available_providers()
    assert CUDA_PROVIDER not in got  # the silent fallback this guards against
    with pytest.raises(InputError) as err:
        check_cuda_session(path, got, available, strict=True)
    assert "--device cuda" in str(err.value) and "onnxruntime-gpu" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="CUDA provider did not load"):  # built with CUDA, which failed to load
        check_cuda_session(path, got, [*available, CUDA_PROVIDER], strict=True)
    check_cuda_session(path, [CUDA_PROVIDER, "CPUExecutionProvider"], available, strict=True)  # on the GPU: quiet


def test_auto_warns_once_and_runs_on_the_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = identity_model(tmp_path / "m.onnx")
    x = torch.arange(18, dtype=torch.float32).reshape(1, 2, 3, 3)
    with caplog.at_level(logging.WARNING):
        modules = [OnnxModule(path, torch.device("cuda"), strict=False) for _ in range(3)]
    said = [r for r in caplog.records if "runs on the CPU, not the GPU" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert modules[0].session.get_providers() == ["CPUExecutionProvider"]
    np.testing.assert_array_equal(modules[0].session.run(None, {"x": x.numpy()})[0], x.numpy())
    with caplog.at_level(logging.WARNING):
        caplog.clear()
        OnnxModule(path, torch.device("cpu"), strict=True)  # the CPU asked for: nothing to say
    assert not caplog.records


def test_device_cuda_is_one_line_through_the_model_loader(tmp_path: Path) -> None:
    path = identity_model(tmp_path / "m.onnx")
    with pytest.raises(InputError) as err:
        TrainedModel(path, strict_device=True).load(torch.device("cuda"))
    assert str(err.value).startswith("--device cuda: ONNX Runtime would run") and "\n" not in str(err.value)
