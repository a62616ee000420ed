"""Hypothesis strategies for the contract's input space (re-exports only).

The code lives in private topic modules: ``_tensors`` (dtypes, float elements, tensors,
non-contiguous views, masks), ``_batches`` (multi-task loss batches, embeddings),
``_metric_data`` (metric inputs, imbalanced classes, ragged streaming partitions) and
``_distributed`` (uneven per-rank shards, global batches for the gathered loss).
"""

from __future__ import annotations

from robustness.strategies._batches import (
    ENCODER_TYPES,
    OUTPUT_KEYS,
    TARGET_LOSS_TYPES,
    TERMS,
    MultiTaskBatch,
    embeddings,
    multitask_batches,
    term_name,
)
from robustness.strategies._distributed import (
    GATHERED_DTYPES,
    GatheredBatch,
    gathered_batches,
    sharded,
    shards,
)
from robustness.strategies._metric_data import (
    METRIC_DTYPES,
    REGRESSION_KINDS,
    ClassificationData,
    CountData,
    Partition,
    RegressionData,
    classification_data,
    count_data,
    partitioned,
    partitions,
    regression_data,
)
from robustness.strategies._tensors import (
    FLOAT_DTYPES,
    KINDS,
    MASK_DTYPES,
    MASK_PATTERNS,
    dtypes,
    float_elements,
    masks,
    noncontiguous,
    tensors,
)

__all__ = [
    "ENCODER_TYPES",
    "FLOAT_DTYPES",
    "GATHERED_DTYPES",
    "KINDS",
    "MASK_DTYPES",
    "MASK_PATTERNS",
    "METRIC_DTYPES",
    "OUTPUT_KEYS",
    "REGRESSION_KINDS",
    "TARGET_LOSS_TYPES",
    "TERMS",
    "ClassificationData",
    "CountData",
    "GatheredBatch",
    "MultiTaskBatch",
    "Partition",
    "RegressionData",
    "classification_data",
    "count_data",
    "dtypes",
    "embeddings",
    "float_elements",
    "gathered_batches",
    "masks",
    "multitask_batches",
    "noncontiguous",
    "partitioned",
    "partitions",
    "regression_data",
    "sharded",
    "shards",
    "tensors",
    "term_name",
]
