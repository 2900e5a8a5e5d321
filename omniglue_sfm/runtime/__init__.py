"""Where and how work runs: torch devices, executors (here or on Ray), output locks, weights,
progress."""
