"""Which figures each outcome kind reports, and which one heads its tables.

One place for the names, because both sides read them: a hospital sends its evaluation figures under these
keys (`fedhealth.hospital.app`), the coordinator records them per round (`fedhealth.coordinator.recorder`),
and the summary, terminal, report and figures show the headline one.
"""

from __future__ import annotations

EVALUATION_KEYS: dict[str, tuple[str, ...]] = {
    "binary": ("auroc", "auprc", "accuracy", "brier"),
    "time_to_event": ("c_index", "uno_c", "ibs", "td_auroc"),
}
HEADLINE: dict[str, str] = {"binary": "auroc", "time_to_event": "c_index"}  # higher is better for both
LABELS: dict[str, str] = {
    "auroc": "AUROC", "auprc": "AUPRC", "accuracy": "accuracy", "brier": "Brier score",
    "c_index": "C-index", "uno_c": "Uno's C", "ibs": "integrated Brier score", "td_auroc": "time-dependent AUROC",
}


def headline(kind: str) -> str:
    """The key of the figure that heads a study's tables: AUROC, or Harrell's C-index for time-to-event."""
    return HEADLINE[kind]


def label(key: str) -> str:
    """A figure's name as a reader sees it."""
    return LABELS.get(key, key)
