"""Which figures each outcome kind reports, and which one heads its tables.

One place for the names, because both sides read them: a hospital sends its evaluation figures under these
keys (`fedhealth.hospital.app`), the coordinator records them per round (`fedhealth.coordinator.recorder`),
and the summary, terminal, report and figures show the headline one.
"""

from __future__ import annotations

EVALUATION_KEYS: dict[str, tuple[str, ...]] = {
    "binary": ("auroc", "auprc", "accuracy", "brier"),
    "time_to_event": ("c_index", "uno_c", "ibs", "td_auroc"),
    "multiclass": ("macro_auroc", "accuracy", "log_loss", "ece"),
    "continuous": ("r2", "mae", "rmse", "calibration_slope"),
}
# higher is better for every headline figure, so a gain is always federated minus local-only
HEADLINE: dict[str, str] = {"binary": "auroc", "time_to_event": "c_index", "multiclass": "macro_auroc",
                            "continuous": "r2"}
LABELS: dict[str, str] = {
    "auroc": "AUROC", "auprc": "AUPRC", "accuracy": "accuracy", "brier": "Brier score",
    "c_index": "C-index", "uno_c": "Uno's C", "ibs": "integrated Brier score", "td_auroc": "time-dependent AUROC",
    "macro_auroc": "macro AUROC", "log_loss": "log loss", "ece": "calibration error (ECE)",
    "r2": "R²", "mae": "MAE", "rmse": "RMSE", "calibration_slope": "calibration slope",
}


def headline(kind: str) -> str:
    """The key of the figure that heads a study's tables: AUROC (binary), Harrell's C-index (time-to-event),
    the macro one-vs-rest AUROC (multi-class), R² (continuous)."""
    return HEADLINE[kind]


def label(key: str) -> str:
    """A figure's name as a reader sees it."""
    return LABELS.get(key, key)
