"""A metrics target computed by torchmetrics' own classes, for the metric rules.

Use it as ``--metrics robustness.adapters.torchmetrics``.

It exposes the six names of the metrics interface (``compute_regression_metrics``,
``compute_classification_metrics``, ``compute_count_metrics`` and the three ``Streaming*``
classes with ``update``/``compute``/``merge``/``reset``), each computed by torchmetrics:
``MeanAbsoluteError``, ``MeanSquaredError``, ``R2Score``; ``MulticlassAccuracy`` (micro),
``MulticlassPrecision`` / ``MulticlassRecall`` / ``MulticlassF1Score`` (``average="weighted"``)
and ``MulticlassConfusionMatrix``. The adapter only translates the interface: inputs are
flattened, count metrics select the valid positions of the mask, log-probabilities ``[B, K]``
are passed as scores, ``merge`` is torchmetrics' ``merge_state``, and regression states are
float64 (``set_dtype``), so what the rules find is torchmetrics' arithmetic. With
``num_classes=None`` the number of classes is taken from the first batch (the width of
``[B, K]`` scores, or the largest id + 1), since torchmetrics fixes it at construction.

torchmetrics is an optional extra: ``pip install 'aam-robustness[torchmetrics]'``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from robustness.errors import InvalidTargetError

try:
    import torchmetrics
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )
except ImportError as exc:  # pragma: no cover - exercised by simulating the missing package
    raise InvalidTargetError(
        "the metrics target robustness.adapters.torchmetrics needs torchmetrics: "
        "pip install 'aam-robustness[torchmetrics]'"
    ) from exc

__all__ = [
    "StreamingClassificationMetrics",
    "StreamingCountMetrics",
    "StreamingRegressionMetrics",
    "compute_classification_metrics",
    "compute_count_metrics",
    "compute_regression_metrics",
]


def _flat(tensor: Any) -> torch.Tensor:
    return torch.as_tensor(tensor).reshape(-1)


class _Stream:
    """One torchmetrics ``Metric`` per result key; ``merge`` through ``merge_state``."""

    _metrics: dict[str, torchmetrics.Metric]

    def _ensure_device(self, device: torch.device) -> None:
        for metric in self._metrics.values():
            metric.to(device)

    def merge(self, other: _Stream) -> _Stream:
        for key, metric in self._metrics.items():
            metric.merge_state(other._metrics[key])
        return self

    def reset(self) -> None:
        for metric in self._metrics.values():
            metric.reset()

    def _values(self) -> dict[str, float]:
        return {key: float(metric.compute()) for key, metric in self._metrics.items()}


def _errors() -> dict[str, torchmetrics.Metric]:
    metrics: dict[str, torchmetrics.Metric] = {
        "mae": torchmetrics.MeanAbsoluteError(),
        "mse": torchmetrics.MeanSquaredError(),
    }
    for metric in metrics.values():
        metric.set_dtype(torch.float64)
    return metrics


class StreamingRegressionMetrics(_Stream):
    """MAE, MSE and R² from torchmetrics' regression classes."""

    def __init__(self) -> None:
        r2 = torchmetrics.R2Score()
        r2.set_dtype(torch.float64)
        self._metrics = {**_errors(), "r2": r2}

    def update(self, y_pred: Any, y_true: Any) -> None:
        """Add a batch (any shapes with the same number of elements)."""
        pred, true = _flat(y_pred), _flat(y_true)
        self._ensure_device(pred.device)
        for metric in self._metrics.values():
            metric.update(pred, true)

    def compute(self) -> dict[str, float]:
        """``{"mae", "mse", "r2"}`` as Python floats."""
        return self._values()


class StreamingCountMetrics(_Stream):
    """Masked MAE and MSE: torchmetrics' classes over the valid positions of the mask."""

    def __init__(self) -> None:
        self._metrics = _errors()

    def update(self, count_pred: Any, count_true: Any, mask: Any) -> None:
        """Add a batch; positions where ``mask == 0`` are left out by selection."""
        pred, true = torch.as_tensor(count_pred), torch.as_tensor(count_true)
        valid = torch.as_tensor(mask) != 0
        if pred.dim() == valid.dim() + 1 and pred.shape[-1] == 1:
            pred, true = pred.squeeze(-1), true.squeeze(-1)
        self._ensure_device(pred.device)
        for metric in self._metrics.values():
            metric.update(pred[valid], true[valid])

    def compute(self) -> dict[str, float]:
        """``{"mae", "mse"}`` as Python floats."""
        return self._values()


class StreamingClassificationMetrics(_Stream):
    """Accuracy, weighted precision/recall/F1 and the confusion matrix from torchmetrics."""

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes
        self._metrics = {} if num_classes is None else self._make(num_classes)

    @staticmethod
    def _make(k: int) -> dict[str, torchmetrics.Metric]:
        return {
            "accuracy": MulticlassAccuracy(num_classes=k, average="micro"),
            "precision": MulticlassPrecision(num_classes=k, average="weighted"),
            "recall": MulticlassRecall(num_classes=k, average="weighted"),
            "f1": MulticlassF1Score(num_classes=k, average="weighted"),
            "confusion_matrix": MulticlassConfusionMatrix(num_classes=k),
        }

    def update(self, y_pred: Any, y_true: Any) -> None:
        """Add a batch: ``y_pred`` ``[B, K]`` scores/log-probabilities or ``[B]`` ids."""
        pred, true = torch.as_tensor(y_pred), _flat(y_true)
        if not self._metrics:
            if pred.dim() == 2:
                k = int(pred.shape[1])
            elif pred.numel() or true.numel():
                k = int(torch.cat([_flat(pred), true]).max()) + 1
            else:
                return  # an empty first batch says nothing about the classes
            self.num_classes = k
            self._metrics = self._make(k)
        self._ensure_device(pred.device)
        for metric in self._metrics.values():
            metric.update(pred, true)

    def merge(self, other: _Stream) -> StreamingClassificationMetrics:
        """Merge ``other``'s states into this one (``merge_state``); ``other`` is unchanged."""
        if not other._metrics:
            return self
        if not self._metrics:
            self._metrics = copy.deepcopy(other._metrics)
            self.num_classes = getattr(other, "num_classes", None)
            return self
        super().merge(other)
        return self

    def compute(self) -> dict[str, Any]:
        """Accuracy, precision, recall, f1 (floats) and ``confusion_matrix`` (int64 [K, K])."""
        if not self._metrics:
            return {k: 0.0 for k in ("accuracy", "precision", "recall", "f1")} | {
                "confusion_matrix": torch.zeros(0, 0, dtype=torch.int64)
            }
        result: dict[str, Any] = {
            key: float(metric.compute())
            for key, metric in self._metrics.items()
            if key != "confusion_matrix"
        }
        result["confusion_matrix"] = self._metrics["confusion_matrix"].compute().to(torch.int64)
        return result


def compute_regression_metrics(y_pred: Any, y_true: Any) -> dict[str, float]:
    """One-shot regression metrics: the streaming class fed once."""
    state = StreamingRegressionMetrics()
    state.update(y_pred, y_true)
    return state.compute()


def compute_classification_metrics(
    y_pred: Any, y_true: Any, num_classes: int | None = None
) -> dict[str, Any]:
    """One-shot classification metrics: the streaming class fed once."""
    state = StreamingClassificationMetrics(num_classes)
    state.update(y_pred, y_true)
    return state.compute()


def compute_count_metrics(count_pred: Any, count_true: Any, mask: Any) -> dict[str, float]:
    """One-shot masked count metrics: the streaming class fed once."""
    state = StreamingCountMetrics()
    state.update(count_pred, count_true, mask)
    return state.compute()
