"""AAM (Attention All Microbes) training losses and metrics, robust to ragged, padded batches."""
