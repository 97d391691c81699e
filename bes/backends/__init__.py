"""Execution backends: where an activity's job actually runs (desktop grid, cloud, ...)."""
