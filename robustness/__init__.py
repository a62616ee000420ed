"""A property-based harness that proves AAM losses and metrics keep NaN and inf out of weights."""
