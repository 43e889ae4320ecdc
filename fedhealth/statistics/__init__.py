"""Federated cohort statistics ("Table 1") and Kaplan-Meier curves from summed per-hospital vectors.

Each hospital computes `local_statistics` of its own records on the study's `StatisticsLayout` (built from
the public schema only); the vectors are summed (under secure aggregation, elsewhere), optionally after
Gaussian noise charged to each hospital's ledger first (`release_statistics`). Nothing here sends anything.
"""

from fedhealth.statistics.kaplan_meier import KMCurve, LogRank, kaplan_meier, logrank
from fedhealth.statistics.layout import StatisticsError, StatisticsLayout
from fedhealth.statistics.local import local_statistics
from fedhealth.statistics.mechanism import charge_release, figure_noise_sd, noise_for_release, release_statistics
from fedhealth.statistics.table import CohortTable, Figure, cohort_table

__all__ = [
    "CohortTable",
    "Figure",
    "KMCurve",
    "LogRank",
    "StatisticsError",
    "StatisticsLayout",
    "charge_release",
    "cohort_table",
    "figure_noise_sd",
    "kaplan_meier",
    "local_statistics",
    "logrank",
    "noise_for_release",
    "release_statistics",
]
