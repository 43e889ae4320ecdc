"""The study report: one self-contained HTML page plus each figure as a PNG, from a run directory alone."""
