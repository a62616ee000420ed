"""Multi-task losses, metrics and training-loop safety for AAM."""
