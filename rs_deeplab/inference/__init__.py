"""Sliding-window inference over whole scenes: window batches, blended probabilities, streamed writes, CRF.

Public API: :func:`predict_scene` (any ``torch.nn.Module``, a :class:`TrainedModel` checkpoint or exported model, or
a :class:`LoadedModel` read once for many scenes), with :class:`TTA` and :class:`CRFSettings`;
:func:`predict_scenes` runs many scenes (:class:`SceneTask`) as one job; :func:`infer_scenes` is what
``pipelines/infer.py`` calls. What a trained model needs besides its weights is its
:class:`~rs_deeplab.config.modelcard.ModelCard`. This package never imports :mod:`rs_deeplab.training`.
"""

from __future__ import annotations

from rs_deeplab.inference.crf.dense import CRFSettings
from rs_deeplab.inference.infer import InferOptions, InferResult, infer_scenes
from rs_deeplab.inference.predicting.predictor import TTA
from rs_deeplab.inference.predicting.scene import SceneResult, SceneTask, predict_scene, predict_scenes
from rs_deeplab.inference.runtimes.trained import LoadedModel, TrainedModel, newest_checkpoint

__all__ = [
    "TTA",
    "CRFSettings",
    "InferOptions",
    "InferResult",
    "LoadedModel",
    "SceneResult",
    "SceneTask",
    "TrainedModel",
    "infer_scenes",
    "newest_checkpoint",
    "predict_scene",
    "predict_scenes",
]
