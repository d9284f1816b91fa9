"""Training: building a run, the epoch loop, its in-memory state, exact resume, sweeps."""
