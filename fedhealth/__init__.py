"""fedhealth: federated learning for hospitals, with differential privacy and secure aggregation.

The Python API (see `fedhealth.api`): `load_study`, `simulate`, `simulate_seeds`, `resume`, `sweep`,
`contribution`, `report` and `Run`; and the errors (see `fedhealth.errors`), every one a `FedhealthError`; and
`RunInterrupted`, which is not an error but SIGINT or SIGTERM stopping a run (a `KeyboardInterrupt`; the run
directory says `interrupted`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedhealth.errors import (
    AggregationError,
    DataError,
    DeploymentError,
    FederationBudgetError,
    FederationError,
    FedhealthError,
    HospitalRefusedError,
    InjectedFault,
    MissingExtraError,
    PrivacyBudgetError,
    PrivacyRecordsError,
    RunDirectoryError,
    RunInterrupted,
    StudyConfigError,
    TrustError,
    UsageError,
)

if TYPE_CHECKING:
    from fedhealth.api import Run, contribution, describe, load_study, report, resume, simulate, simulate_seeds, sweep

__version__ = "0.1.0"

_API = ("Run", "contribution", "describe", "load_study", "report", "resume", "simulate", "simulate_seeds", "sweep")
__all__ = [  # spelt out (not *_API) so that linters and type checkers read it
    "Run",
    "contribution",
    "describe",
    "load_study",
    "report",
    "resume",
    "simulate",
    "simulate_seeds",
    "sweep",
    "AggregationError",
    "DataError",
    "DeploymentError",
    "FederationBudgetError",
    "FederationError",
    "FedhealthError",
    "HospitalRefusedError",
    "InjectedFault",
    "MissingExtraError",
    "PrivacyBudgetError",
    "PrivacyRecordsError",
    "RunDirectoryError",
    "RunInterrupted",
    "StudyConfigError",
    "TrustError",
    "UsageError",
]


def __getattr__(name: str) -> Any:
    """The API is imported on first use, so `import fedhealth` stays cheap in every Ray worker and ClientApp."""
    if name in _API:
        from fedhealth import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
