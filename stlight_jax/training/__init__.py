"""Training: the loop, what it works with, the optimizer and schedules, stop signals and the
workdir lock."""
