"""Scores: confusion matrices and their metrics, and prediction rasters scored against ground-truth rasters.

Public API: :func:`confusion_matrix`, :func:`scores` (:class:`Scores`), :func:`markdown_table`, and
:func:`evaluate_scenes` (what ``pipelines/evaluate.py`` calls). Imports no torch.
"""

from __future__ import annotations

from rs_deeplab.evaluation.metrics import Scores, confusion_matrix, markdown_table, scores
from rs_deeplab.evaluation.scenes import evaluate_scenes

__all__ = ["Scores", "confusion_matrix", "evaluate_scenes", "markdown_table", "scores"]
