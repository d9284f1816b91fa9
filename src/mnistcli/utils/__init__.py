"""Helpers every layer may use: user errors, safe file writes, optional extras, safe torch loading, timing,
progress, the device and seeds, torchrun, metrics, YAML as data. Nothing here knows about models or data."""
