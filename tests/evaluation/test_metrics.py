from __future__ import annotations

import numpy as np
import pytest

from rs_deeplab.evaluation.metrics import confusion_matrix, markdown_table, scores


def test_confusion_matrix_counts_and_ignores() -> None:
    truth = np.array([[0, 0, 1, 1, 255, 2]])
    pred = np.array([[0, 1, 1, 1, 0, 255]])
    cm = confusion_matrix(pred, truth, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]


def test_scores_against_hand_computation() -> None:
    cm = np.array([[50, 10, 0], [5, 30, 5], [0, 0, 0]])
    s = scores(cm)
    assert s.iou[0] == pytest.approx(50 / (50 + 5 + 10))
    assert s.iou[1] == pytest.approx(30 / (30 + 10 + 10))
    assert s.iou[2] == 0.0  # predicted 5 times, never true: counts as a miss
    assert s.miou == pytest.approx(np.mean([50 / 65, 30 / 50, 0.0]))
    assert s.f1[1] == pytest.approx(60 / 80)
    assert s.overall_accuracy == pytest.approx(80 / 100)
    assert s.pixels == 100


def test_absent_class_is_nan_and_left_out_of_mean() -> None:
    s = scores(np.array([[5, 0], [0, 0]]))
    assert np.isnan(s.iou[1]) and s.miou == 1.0


def test_perfect_and_random(rng: np.random.Generator) -> None:
    truth = rng.integers(0, 6, size=(64, 64))
    assert scores(confusion_matrix(truth, truth, 6)).miou == 1.0
    noisy = scores(confusion_matrix(rng.integers(0, 6, size=(64, 64)), truth, 6))
    assert noisy.miou < 0.2


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differs"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)


def test_markdown_table() -> None:
    table = markdown_table(scores(np.array([[3, 1], [0, 4]])), ["a", "b"])
    assert "| a | 75.00 |" in table and "Overall accuracy: 87.50%" in table
