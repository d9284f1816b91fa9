"""A run on disk: its folder, checkpoints, what it shows of itself (curves, TensorBoard), plots."""
