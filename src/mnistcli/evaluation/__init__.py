"""Evaluating a checkpoint on a split: scores, comparison, the JSON report, temperature calibration."""
