"""Model quality figures: discrimination, calibration, and per-hospital summaries."""
