"""The run directory: every file name and its format (`rundir`), and optional experiment trackers
(`tracking`). Flower-free."""
