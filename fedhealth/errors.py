"""Every error fedhealth raises on purpose is a `FedhealthError`, and each subclass here means one thing.

Catch `FedhealthError` for "fedhealth refused or could not do it, and the message says why"; catch one
subclass for one kind of failure. The concrete exceptions stay in the modules that raise them (each also
keeps its built-in base, so `except ValueError` and `except RuntimeError` catch what they always did):

===========================  ==================================================================================
category                     raised as (module under fedhealth/: class)
===========================  ==================================================================================
StudyConfigError             study.config: ConfigError; study.schema: SchemaError;
                             study.textfile: TextFileError, NotUtf8Error
DataError                    data.validation: DataFileError
RunDirectoryError            runs.rundir: RunDirError, RunDirDamaged; reporting.report: ReportError;
                             experiments.privacy_audit: AuditError
UsageError                   api (an argument it cannot use); durable: PathEscapeError
PrivacyBudgetError           privacy.ledger: BudgetExceeded
PrivacyRecordsError          privacy.ledger: LedgerError, LedgerUnreadable; privacy.terms: TermsUnusable;
                             privacy.audit: AuditError;
                             privacy.secret: SecretError
HospitalRefusedError         hospital.guard: HospitalRefusal; hospital.app: NonFiniteUpdateError;
                             hospital.secure_aggregation: UpdateRefused, _Declined; privacy.ledger: StaleRound;
                             privacy.terms: TermsChanged
AggregationError             coordinator.secure_aggregation: AggregateRefused; coordinator.app: NothingAggregated
FederationError              experiments.simulate: SimulationError; coordinator.recorder: RoundsFailedError;
                             coordinator.attendance: HospitalsMissing
FederationBudgetError        experiments.contribution: BudgetExhausted
TrustError                   security.certs: PKIError, CertificateError; deployment.app_trust: AppTrustError
MissingExtraError            runs.tracking: TrackingError
DeploymentError              hospital.node_config: NodeConfigError; deployment.supernode: LauncherError;
                             deployment.gateway: GatewayError
InjectedFault                hospital.secure_aggregation: InjectedDropout (tests only)
===========================  ==================================================================================

`RunInterrupted` is the one exception here that is no `FedhealthError`: a stop asked for by SIGINT or SIGTERM
is not a failure, and it must pass every `except Exception` on its way out (a round that catches a protocol
error must not record the stop as a failed round), so it is a `KeyboardInterrupt`.

This module imports nothing, so every layer can use it; `terminal_safe` is here for the same reason: every
layer that writes a message with a user-given string in it can make it safe for a terminal.
"""

from __future__ import annotations

__all__ = [
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


class FedhealthError(Exception):
    """Base of every error fedhealth raises on purpose; the message is fit for a terminal, one line per problem."""


class StudyConfigError(FedhealthError, ValueError):
    """A study config (or the study schema it names) that cannot run; the message names the key and the value."""


class DataError(FedhealthError, ValueError):
    """A hospital's data file that cannot be used at all; the message names the file and what to change."""


class RunDirectoryError(FedhealthError):
    """A run directory that cannot be created, resumed, reported on or audited; the message says which and why."""


class UsageError(FedhealthError, ValueError):
    """An argument of a fedhealth function that it cannot use (a negative count, an epsilon that is no number)."""


class PrivacyBudgetError(FedhealthError):
    """A release would take a hospital past its epsilon cap: the hospital declines it, nothing leaves."""


class PrivacyRecordsError(FedhealthError):
    """A hospital's own privacy records (its ledger, audit log or noise secret) cannot be trusted or used;
    nothing trains on that hospital until they are fixed."""


class HospitalRefusedError(FedhealthError):
    """A hospital refuses what the server asked of it (a stale round, an update it will not send); the study
    goes on without that hospital's update for the round."""


class AggregationError(FedhealthError):
    """An aggregate that is not released: a round's (too few hospitals sent a masked vector), or the whole
    study's (no round aggregated anything, so there is no federated model)."""


class FederationError(FedhealthError):
    """A federation that stopped before completing its planned rounds; a simulation's run directory can be
    resumed from its last completed round."""


class FederationBudgetError(FedhealthError):
    """The number of federations the user allowed (a contribution estimate's budget) is used up."""


class TrustError(FedhealthError):
    """Keys, certificates, a study PKI, an app's signature or a trusted-entities file that cannot be created,
    used or trusted; the message names the file and what to do."""


class MissingExtraError(FedhealthError):
    """A feature was asked for whose optional extra is not installed; the message says what to install."""


class DeploymentError(FedhealthError):
    """A deployment setting that cannot work (a hospital's node config, the SuperNode launcher, the gateway's
    addresses); the message names the setting and what to change."""


class InjectedFault(FedhealthError):
    """A fault a test injected (`testing.dropouts`); never raised in a real study."""


# Control characters (C0, DEL, C1) that a terminal would act on: an escape sequence can recolour, move the
# cursor or retitle the window, and a stray newline can forge a line of fedhealth's own output.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROL_KEEP_LINES = {c: e for c, e in _CONTROL.items() if c != 0x0A}


def terminal_safe(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every control character written as `\\xNN`, so a user-given string (a path, a name, a
    key) reaches a terminal or a report as what it is, never as an instruction to the terminal.
    `keep_newlines` keeps line breaks, for a message fedhealth itself wrote one line per problem."""
    return text.translate(_CONTROL_KEEP_LINES if keep_newlines else _CONTROL)


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run: the federation was wound down, its run directory says `interrupted`
    and `--resume` continues it. A KeyboardInterrupt, not a FedhealthError (see the module docstring).

    `signal_name` is the signal ("SIGINT", "SIGTERM"); the message says what stopped and how to continue."""

    def __init__(self, message: str = "", signal_name: str = "SIGINT") -> None:
        super().__init__(message or f"stopped by {signal_name}")
        self.signal_name = signal_name

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else f"stopped by {self.signal_name}"
