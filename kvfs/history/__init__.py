"""File history: every change to a file kept as a version, listed, diffed and restored."""
