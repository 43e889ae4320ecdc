"""One typed study configuration, loaded from TOML, overridable from the CLI.

Why a single object: every stage (data, model, training, federation, references) reads its
settings from here, so a run directory's `config.resolved.toml` is the whole truth about a run.
Errors are raised before anything starts and name the key, the bad value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tomllib
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core.core_schema import ValidationInfo

from fedhealth.errors import StudyConfigError
from fedhealth.study.builtin_schema import REGIONS, TIERS
from fedhealth.study.names import MAX_NAME, name_problem
from fedhealth.study.policy import SitePolicy, effective_cap
from fedhealth.study.ranges import within
from fedhealth.study.schema import NOT_FINITE, Outcome, StudySchema, TimeSpec, ValueSpec

Tier = Literal["tertiary", "secondary", "community"]
Region = Literal["north", "south", "east", "west", "central"]
StrategyName = Literal["fedavg", "fedprox", "fedadam", "qfedavg"]
ModelName = Literal["logreg", "mlp"]
SurvivalModel = Literal["logistic_hazard", "cox"]
MIN_TRAIN_RECORDS = 10  # fewer training records than this at a hospital: its local steps learn nothing useful
DERIVED_SUFFIX = 32  # a sibling study's name (`variant`): the study's own name and a suffix such as -eps-0.5


# The follow-up of a generated time-to-event study (`fedhealth.data.synthetic_survival`: whole days, at most
# three years): the hazard model's interval edges and the horizons of its time-dependent metrics. Fixed
# choices of the study, never derived from any hospital's records.
GENERATED_TIME = TimeSpec(
    column="time", unit="days", max=1095,
    intervals=[0, 30, 60, 90, 120, 180, 240, 300, 365, 450, 545, 730, 910, 1095],
    horizons=[180, 365, 730], description="days from diagnosis to the complication or to the end of follow-up")

# A generated multi-class study: the severity of the 12-month complication, in order (the model's output k is
# class k). `fedhealth/data/synthetic_outcomes.py` draws it with known true class probabilities.
GENERATED_CLASSES: tuple[str, ...] = ("none", "moderate", "severe")
# A generated continuous study: HbA1c at the 12-month visit, %; the valid range and the fixed reference centre
# and scale its target is standardised by (`fedhealth/data/synthetic_outcomes.py` draws it with a known mean).
GENERATED_VALUE = ValueSpec(unit="%", min=3.0, max=20.0, center=6.0, scale=1.2,
                            description="HbA1c at the 12-month visit (NGSP/DCCT %)")


class ConfigError(StudyConfigError, ValueError):
    """A configuration that cannot run; the message is one line per problem, fit for a terminal."""


class _Strict(BaseModel):
    # allow_inf_nan=False: inf or nan in any float key (a learning rate, a clipping norm, a target epsilon)
    # passes every `gt`/`le` bound yet breaks training or the privacy accounting rounds later.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class HospitalConfig(_Strict):
    """One hospital: generated from a profile (tier, region, records), or read from its own `data` file.

    A file hospital's `records` (usable rows) and `data_sha256` are filled in when the config is loaded;
    its tier and region are free labels for the report (default "unspecified")."""

    name: str = Field(min_length=1, description="becomes file names: see fedhealth/study/names.py")
    tier: str = Field(default="unspecified", min_length=1)
    region: str = Field(default="unspecified", min_length=1)
    records: int | None = Field(default=None, ge=1, le=10_000_000, description="patient records (rows)")
    data: str | None = Field(default=None, description="CSV or Parquet file, relative to the config file")
    data_sha256: str | None = Field(default=None, description="filled in at load: the file the study uses")
    policy: SitePolicy | None = Field(default=None, description="this hospital's own site policy: it wins")

    @field_validator("name")
    @classmethod
    def _file_name(cls, name: str) -> str:
        problem = name_problem(name)
        if problem is not None:
            raise ValueError(problem)
        return name

    @field_validator("tier", "region")
    @classmethod
    def _printable(cls, label: str) -> str:
        # free labels, but printed in the terminal table and the report: no escape codes, no forged lines
        bad = next((c for c in label if not c.isprintable()), None)
        if bad is not None:
            raise ValueError(f"the character {bad!r} cannot be printed; a label is one line of plain text")
        return label

    def generator_problems(self) -> list[str]:
        """Why the generator cannot draw this hospital (a study without a schema generates every hospital)."""
        problems = []
        if self.tier not in TIERS:
            problems.append(f"tier {self.tier!r} is not a generator tier; choose one of {', '.join(TIERS)}")
        if self.region not in REGIONS:
            problems.append(f"region {self.region!r} is not a generator region; choose one of {', '.join(REGIONS)}")
        if self.records is None or self.records < 50:
            problems.append(f"records must be at least 50 for a generated hospital (got {self.records})")
        return problems


class PopulationConfig(_Strict):
    """A recipe for many hospitals (e.g. 100) instead of listing each; expanded deterministically."""

    count: int = Field(ge=1, le=10_000)
    tier_weights: dict[Tier, float] = Field(
        default_factory=lambda: {"tertiary": 0.1, "secondary": 0.3, "community": 0.6}
    )
    regions: list[Region] = Field(default_factory=lambda: list(REGIONS))
    records_min: int = Field(default=200, ge=50)
    records_max: int = Field(default=30_000, le=1_000_000)

    @model_validator(mode="after")
    def _range(self) -> PopulationConfig:
        if self.records_min > self.records_max:
            raise ValueError(f"records_min ({self.records_min}) must not exceed records_max ({self.records_max})")
        if not self.regions:
            raise ValueError("regions must name at least one region")
        if any(w < 0 for w in self.tier_weights.values()) or sum(self.tier_weights.values()) <= 0:
            raise ValueError("tier_weights must be non-negative and not all zero")
        return self


class StrategyConfig(_Strict):
    """Flower's server strategy and its hyper-parameters (only the chosen one's are used)."""

    name: StrategyName = "fedavg"
    fraction_fit: float = Field(default=1.0, gt=0, le=1)
    proximal_mu: Annotated[float, within("federation.strategy.proximal_mu")] = Field(
        default=0.01, ge=0, description="FedProx proximal term weight")
    server_learning_rate: Annotated[float, within("federation.strategy.server_learning_rate")] = Field(
        default=0.05, gt=0, description="FedAdam eta")
    server_momentum: float = Field(default=0.9, ge=0, lt=1, description="FedAdam beta_1")
    server_second_moment: float = Field(default=0.99, ge=0, lt=1, description="FedAdam beta_2")
    server_tau: Annotated[float, within("federation.strategy.server_tau")] = Field(
        default=1e-3, gt=0, description="FedAdam adaptivity tau")
    q: float = Field(default=1.0, ge=0, le=50,
                     description="q-FedAvg fairness: 0 = unweighted mean of updates, larger = more weight to "
                                 "the hospitals with the highest loss")
    qffl_learning_rate: Annotated[float, within("federation.strategy.qffl_learning_rate")] = Field(
        default=10.0, gt=0,
        description="q-FedAvg's 1/L (Lipschitz estimate). The paper's L = 1/lr fits one local SGD step; a "
                    "round of local training moves much further, and at 1/L = lr the global model barely "
                    "moves (smoke study: AUROC 0.62 after 8 rounds). 10 matched FedAvg's pace on the default study")


class ModelConfig(_Strict):
    name: ModelName = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [32, 16])
    survival: SurvivalModel = Field(
        default="logistic_hazard", description="a time-to-event study's likelihood: the discrete-time logistic "
        "hazard over the [time] table's intervals (every privacy mode), or Cox's partial likelihood with "
        "Breslow ties (not with privacy.mode = \"record\": `COX_WITH_RECORD_DP` says why)")

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(h <= 0 for h in v):
            raise ValueError("every hidden layer width must be a positive integer")
        return v

    @model_serializer(mode="wrap")
    def _as_before_cox(self, handler: Any) -> dict[str, Any]:
        """A study on the default likelihood dumps exactly as before `survival` existed, so its fingerprint
        (run directories, resumes, the ledger's study id) and the payload hospitals receive are unchanged."""
        data = handler(self)
        if self.survival == "logistic_hazard":
            data.pop("survival", None)
        return data


# Why a Cox model cannot train under record-level DP-SGD; the config's refusal and DP-SGD's own say it.
COX_WITH_RECORD_DP = (
    "model.survival = \"cox\" is not offered with privacy.mode = \"record\": the Cox partial likelihood couples "
    "the records of each risk set (every event's term holds everyone still at risk), so per-sample clipping "
    "does not bound one record's influence and the DP-SGD guarantee would not hold; for record-level DP use "
    "model.survival = \"logistic_hazard\" (a sum of one term per record), or keep Cox with privacy.mode = "
    "\"none\" or \"hospital\" (hospital-level DP clips and noises each hospital's whole update, which stays valid)")


def survival_model_problem(cfg: StudyConfig) -> str | None:
    """Why the study's `model.survival` cannot run (one line), or None: Cox needs a time-to-event outcome, and
    no record-level DP. Checked at every load, so a hospital refuses a server that asks for it too."""
    if cfg.model.survival == "logistic_hazard":
        return None
    if cfg.outcome_kind != "time_to_event":
        return (f"model.survival = \"{cfg.model.survival}\" needs outcome = \"time_to_event\" (this study's outcome "
                f"is {cfg.outcome_kind!r}); remove model.survival")
    if cfg.privacy.mode == "record":
        return COX_WITH_RECORD_DP
    return None


class TrainingConfig(_Strict):
    """Local training at each hospital; the same settings drive the local-only and pooled references."""

    local_epochs: int = Field(default=1, ge=1, le=1000)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    learning_rate: Annotated[float, within("training.learning_rate")] = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: Annotated[float, within("training.weight_decay")] = Field(default=0.0, ge=0)
    test_fraction: float = Field(default=0.25, gt=0, lt=1)


SecAggStage = Literal["setup", "share_keys", "collect_masked_vectors", "after_training", "unmask",
                      "malformed_masked_vector"]


class SecureAggregationConfig(_Strict):
    """Flower's SecAgg+: on by default. Every protocol parameter is derived (see
    `fedhealth.study.secagg`); the optional keys here override the derivation and are
    checked against it, so a combination that could overflow or stall is refused before round 1."""

    enabled: bool = Field(default=True, description="false = plain aggregation: the server sees every update")
    dropout_rate: float = Field(default=0.1, ge=0, lt=0.5,
                                description="expected fraction of hospitals lost mid-round; sizes shares/threshold")
    max_consecutive_failures: int = Field(default=3, ge=1, description="failed rounds in a row before the run stops")
    timeout: Annotated[float, within("federation.secure_aggregation.timeout")] = Field(
        default=600.0, gt=0, description="seconds the server waits for each protocol stage")
    num_shares: int | None = Field(default=None, ge=3, description="override: neighbours per hospital (odd)")
    reconstruction_threshold: int | None = Field(default=None, ge=2, description="override: shares to unmask")
    max_weight: int | None = Field(default=None, ge=1,
                                   description="override: largest FedAvg weight (training records) of any hospital")
    update_bound: Annotated[float, within("federation.secure_aggregation.update_bound")] | None = Field(
        default=None, gt=0,
                                       description="override: per-coordinate bound on a model update")


class FederationConfig(_Strict):
    rounds: int = Field(default=10, ge=1, le=10_000)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    secure_aggregation: SecureAggregationConfig = Field(default_factory=SecureAggregationConfig)
    participants: list[str] | None = Field(
        default=None, description="hospitals that train (by name); the others only evaluate. Default: all")
    backend: Literal["auto", "in-process", "ray"] = Field(
        default="auto", description="simulation only: Flower's simulation engine runs the hospitals' "
        "ClientApps in this process, one at a time (\"in-process\", no start-up cost), or on Ray actors "
        "(\"ray\": several cores, a cluster with ray_address); \"auto\": Ray given a ray_address or "
        "from 100 hospitals on a machine of several cores, in-process otherwise; a deployed hospital ignores it")
    ray_address: str | None = Field(
        default=None, description="simulation with backend \"ray\": the address of a running Ray cluster to "
        "join (\"auto\", or host:port of its head); default: start Ray on this machine")
    cpus_per_client: Annotated[float, within("federation.cpus_per_client")] = Field(
        default=1.0, gt=0, description="Ray CPUs per simulated hospital (backend \"ray\")")
    wait_for_hospitals: Annotated[float, within("federation.wait_for_hospitals")] = Field(
        default=600.0, gt=0, description="seconds the server waits, before each round, for every hospital to be "
                                         "connected; then it goes on with those present, or stops the study")
    min_hospitals: int | None = Field(
        default=None, ge=1, description="fewest connected hospitals a round may go on with (default: all)")
    reply_timeout: Annotated[float, within("federation.reply_timeout")] = Field(
        default=600.0, gt=0, description="seconds the server waits for the hospitals' replies to an exchange that "
                                         "has no wait of its own (evaluation, plain aggregation's training); a "
                                         "hospital silent for longer is left out of that exchange")

    @model_validator(mode="after")
    def _ray_address_needs_ray(self) -> FederationConfig:
        if self.ray_address is not None and self.backend == "in-process":
            raise ValueError("federation.ray_address is set but federation.backend = \"in-process\" never uses "
                             "Ray: set federation.backend = \"ray\" (or \"auto\"), or remove ray_address")
        return self


class PrivacyConfig(_Strict):
    """Differential privacy, in one of two clearly separate modes:

    - "record": record-level DP-SGD (Opacus) inside each hospital; the unit is one patient record.
    - "hospital": hospital-level DP (Flower's client-side fixed clipping + server-side Gaussian noise);
      the unit is a hospital's whole data set, hiding whether it took part at all.

    Give a noise multiplier, or a target epsilon for the whole planned run; not both.
    """

    mode: Literal["none", "record", "hospital"] = "none"
    noise_multiplier: Annotated[float, within("privacy.noise_multiplier")] | None = Field(default=None, gt=0)
    target_epsilon: Annotated[float, within("privacy.target_epsilon")] | None = Field(default=None, gt=0)
    delta: Annotated[float, within("privacy.delta")] | None = Field(default=None, gt=0, lt=1,
                                description="default: min(1e-5, 0.1 / largest training set)")
    allow_large_delta: bool = Field(
        default=False, description="simulation: accept a delta above 1 / (10 x the smallest hospital's training "
                                   "records); a deployed hospital's own policy still applies")
    max_grad_norm: Annotated[float, within("privacy.max_grad_norm")] = Field(
        default=1.0, gt=0, description="per-sample L2 clipping norm")
    max_epsilon: Annotated[float, within("privacy.max_epsilon")] = Field(
        default=10.0, gt=0, description="default per-hospital cap (epsilon at delta)")
    clipping_norm: Annotated[float, within("privacy.clipping_norm")] = Field(
        default=1.0, gt=0, description="hospital mode: L2 clip of each model update")
    hospital_noise: Literal["central", "distributed"] = Field(
        default="central", description="hospital mode: noise added by the server after unmasking, or split "
                                       "across hospitals before masking (needs secure aggregation)")
    min_contributors: int | None = Field(
        default=None, ge=1, description="hospital mode: the fixed number of contributors the noise is calibrated "
                                        "to; rounds with fewer are refused before unmasking (default 3)")
    colluding_hospitals: int = Field(
        default=0, ge=0, description="hospital mode, distributed noise: hospitals that may collude with the "
                                     "server; each noise share is sized so the others alone supply it all")

    @model_validator(mode="after")
    def _one_noise_source(self) -> PrivacyConfig:
        if self.mode != "none" and (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(f"privacy: mode {self.mode!r} needs exactly one of noise_multiplier or target_epsilon")
        return self


class InjectedDropout(_Strict):
    """Test-only fault: this hospital vanishes at this stage of the SecAgg+ protocol (or, with
    `malformed_masked_vector`, sends a masked vector with an array missing)."""

    hospital: str = Field(min_length=1, description="hospital name")
    stage: SecAggStage
    rounds: list[int] = Field(default_factory=list, description="rounds it vanishes in; empty = every round")


class TestingConfig(_Strict):
    """Fault injection for tests. Never set in a real study: a run with faults says so in its log."""

    dropouts: list[InjectedDropout] = Field(default_factory=list)


class DescribeConfig(_Strict):
    """A cohort description (`fedhealth describe`): each hospital's counts, sums and histograms of its records
    (`fedhealth.statistics`), summed under SecAgg+ in one round, instead of training.

    `epsilon`: each hospital adds Gaussian noise to its vector so that this one release costs it at most this
    epsilon (at the study's delta), charged to its privacy ledger before the vector leaves, in the same budget
    as its training; omitted, the statistics are exact, which only a simulated hospital agrees to (a deployed
    hospital always declines an exact release). `bins`: equal-width histogram bins per numeric column on its
    valid range (medians and quartiles are read from them). `min_cell`: a released count below it is
    withheld from the table, with the reason (a hospital's own `policy.min_cell` may raise it)."""

    epsilon: Annotated[float, within("describe.epsilon")] | None = Field(default=None, gt=0)
    bins: int = Field(default=20, ge=2, le=200)
    min_cell: int = Field(default=5, ge=0)


class TrackingConfig(_Strict):
    """Optional experiment tracking (an extra): MLflow file store or TensorBoard event files, local only."""

    backend: Literal["none", "mlflow", "tensorboard"] = "none"
    uri: str = Field(default="", description="MLflow tracking URI or TensorBoard log dir; default: in the run dir")
    experiment: str = Field(default="", description="MLflow experiment name; default: the study name")


class ReferencesConfig(_Strict):
    """Which reference models a simulation trains on the same splits (local-only, pooled)."""

    local_only: bool = True
    pooled: bool = True
    non_private_federation: bool = Field(
        default=True, description="with record-level DP: also run the same federation without DP (utility cost)")


def without_privacy(cfg: StudyConfig) -> StudyConfig:
    """The same study with DP off and no site policies: the counterfactual that prices privacy.

    Simulation only: policies are dropped because a policy that caps epsilon refuses non-DP work.
    """
    return variant(cfg, f"{cfg.name}-no-dp", {"privacy": {"mode": "none"}}, site_policies=False)


class StudyConfig(_Strict):
    """A whole simulated study. `hospitals` is always explicit after loading (populations are expanded)."""

    name: str = Field(default="study", description="becomes file names: see fedhealth/study/names.py")
    seed: int = Field(default=42, ge=0, lt=2**32)
    outcome: Outcome = Field(
        default="binary", description="what the generated hospitals' records hold: binary (a 12-month "
        "complication), time_to_event (the same patients followed in time, `GENERATED_TIME`), multiclass (its "
        "severity, `GENERATED_CLASSES`) or continuous (HbA1c at 12 months, `GENERATED_VALUE`); a study of "
        "files takes its schema's study.outcome, and this key may only repeat it")
    hospitals: list[HospitalConfig] = Field(default_factory=list)
    population: PopulationConfig | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    references: ReferencesConfig = Field(default_factory=ReferencesConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    testing: TestingConfig = Field(default_factory=TestingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    describe: DescribeConfig | None = Field(
        default=None, description="set by `fedhealth describe`: the one round describes the cohort, no training")
    study_schema: StudySchema | None = Field(
        default=None, description="the schema of a study whose hospitals are files (TOML key `schema` = its path)")
    _fingerprint: str | None = PrivateAttr(default=None)

    @property
    def outcome_kind(self) -> Outcome:
        """The outcome the study trains: its schema's `study.outcome` for files, else `outcome`."""
        return self.study_schema.study.outcome if self.study_schema is not None else self.outcome

    @property
    def time_spec(self) -> TimeSpec | None:
        """A time-to-event study's follow-up: its schema's `[time]`, or the generator's (`GENERATED_TIME`)."""
        if self.outcome_kind != "time_to_event":
            return None
        if self.study_schema is not None:
            return self.study_schema.time
        return GENERATED_TIME

    @property
    def class_names(self) -> tuple[str, ...]:
        """A multi-class study's classes in model-output order: its schema's `label.classes`, or the
        generator's (`GENERATED_CLASSES`); () for other kinds."""
        if self.outcome_kind != "multiclass":
            return ()
        if self.study_schema is not None:
            return tuple(c.name for c in self.study_schema.label.classes or ())
        return GENERATED_CLASSES

    @property
    def value_spec(self) -> ValueSpec | None:
        """A continuous study's outcome unit and range: its schema's `[value]`, or the generator's."""
        if self.outcome_kind != "continuous":
            return None
        if self.study_schema is not None:
            return self.study_schema.value
        return GENERATED_VALUE

    @model_serializer(mode="wrap")
    def _as_before_outcome_kinds(self, handler: Any) -> dict[str, Any]:
        """A binary study dumps exactly as it did before outcome kinds (no `outcome` key), so its fingerprint
        (which keys run directories, resumes and the ledger's study id) and its wire payload are unchanged."""
        data = handler(self)
        if self.outcome == "binary":
            data.pop("outcome", None)
        if self.describe is None:  # a training study dumps as before `describe` existed
            data.pop("describe", None)
        return data

    @property
    def from_files(self) -> bool:
        """True when every hospital's records come from its own file, under `study_schema`."""
        return self.study_schema is not None

    @field_validator("name")
    @classmethod
    def _file_name(cls, name: str, info: ValidationInfo) -> str:
        # A sibling study (`variant`) adds a suffix to a name that already passed; it may pass the user's limit.
        derived = bool(info.context and info.context.get("derived"))
        problem = name_problem(name, max_length=MAX_NAME + DERIVED_SUFFIX if derived else MAX_NAME)
        if problem is not None:
            raise ValueError(problem)
        return name

    @model_validator(mode="after")
    def _hospitals(self) -> StudyConfig:
        if self.population is not None:
            if self.hospitals:
                raise ValueError("hospitals: give either [[hospitals]] or [population], not both")
            expanded = expand_population(self.population, self.seed)
            object.__setattr__(self, "hospitals", expanded)
            object.__setattr__(self, "population", None)
        if not self.hospitals:
            raise ValueError("hospitals: a study needs at least one hospital: add [[hospitals]] or [population]")
        _one_data_source(self)
        if self.describe is not None:
            if not self.federation.secure_aggregation.enabled:
                raise ValueError("describe: a cohort description is summed under SecAgg+ only; remove "
                                 "federation.secure_aggregation.enabled = false")
            if self.privacy.mode != "none":
                raise ValueError("describe: a description's noise is its own (describe.epsilon), charged at "
                                 "privacy.delta; `fedhealth describe` sets privacy.mode = \"none\"")
            if self.federation.rounds != 1 or self.federation.strategy.fraction_fit != 1.0:
                raise ValueError("describe: a cohort description is one round in which every hospital takes part; "
                                 "`fedhealth describe` sets federation.rounds = 1 and fraction_fit = 1")
        survival = survival_model_problem(self)
        if survival is not None:
            raise ValueError(survival)
        if self.privacy.mode == "record" and self.federation.strategy.name == "fedprox":
            raise ValueError("federation.strategy.name: fedprox is not yet supported with privacy.mode = 'record' "
                             "(the proximal term is not part of the DP-SGD loop); use fedavg or fedadam")
        if self.privacy.mode == "hospital" and self.federation.strategy.name == "fedadam":
            raise ValueError("federation.strategy.name: fedadam is not supported with privacy.mode = 'hospital' "
                             "(Flower's DP wrapper would add noise after the server optimiser, not to the mean "
                             "update it is calibrated for); use fedavg or fedprox")
        if self.privacy.mode != "none" and self.federation.strategy.name == "qfedavg":
            raise ValueError("federation.strategy.name: qfedavg is not supported with differential privacy "
                             "(it weighs each update by the hospital's training loss, which DP does not cover); "
                             "use fedavg, or privacy.mode = 'none'")
        secure = self.federation.secure_aggregation.enabled
        if self.privacy.hospital_noise == "distributed" and (self.privacy.mode != "hospital" or not secure):
            raise ValueError("privacy.hospital_noise: 'distributed' needs privacy.mode = 'hospital' and "
                             "federation.secure_aggregation.enabled = true (each hospital's share of the noise "
                             "is too small to protect an update the server can see)")
        names = [h.name for h in self.hospitals]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"hospitals: names must be unique; repeated: {', '.join(duplicates)}")
        participants = self.federation.participants
        if participants is not None:
            stray = sorted(set(participants) - set(names))
            if stray or not participants:
                what = f"no hospital named {', '.join(stray)}" if stray else "empty"
                raise ValueError(f"federation.participants: {what}; name at least one of the study's hospitals, "
                                 "or remove the key")
        least = self.federation.min_hospitals
        if least is not None and least > len(self.hospitals):
            raise ValueError(f"federation.min_hospitals = {least}: the study has only {len(self.hospitals)} hospitals")
        if least is not None and secure and least < 3:
            raise ValueError(f"federation.min_hospitals = {least}: secure aggregation needs at least 3 hospitals in "
                             "a round (with 2, each could read the other's update from the sum); raise it to 3, "
                             "or set federation.secure_aggregation.enabled = false")
        unknown = sorted({d.hospital for d in self.testing.dropouts} - set(names))
        if unknown:
            raise ValueError(f"testing.dropouts: no hospital named {', '.join(unknown)}")
        from fedhealth.study.hospital_dp import check_hospital_dp

        check_hospital_dp(self)  # raises ValueError naming the key to change
        from fedhealth.study.policy import refused_by_every_policy

        refusal = refused_by_every_policy(self)
        if refusal:
            raise ValueError(refusal)
        if secure:
            from fedhealth.study.secagg import derive_secagg_params

            # validation only: no check depends on the noise, which the privacy layer calibrates
            derive_secagg_params(self, noise_std_per_hospital=0.0)  # raises ValueError naming the key to change
        return self

    def privacy_delta(self) -> float:
        """Delta for every hospital: as given, else min(1e-5, 0.1 / the largest hospital's training
        records), so delta is well below 1/records at every hospital, the largest included (a delta
        near 1/n would allow a whole record to leak)."""
        if self.privacy.delta is not None:
            return self.privacy.delta
        if self.privacy.mode == "hospital":  # the unit is a hospital: delta well below 1 / hospitals
            return min(1e-5, float(f"{0.1 / len(self.hospitals):.2g}"))
        largest = max(h.records for h in self.hospitals)
        n_train = max(1, int(largest * (1 - self.training.test_fraction)))
        return min(1e-5, float(f"{0.1 / n_train:.2g}"))

    def epsilon_cap(self, index: int) -> float:
        """The hospital's own cap if its policy sets one (the server cannot raise it), else the study's."""
        return effective_cap(self.hospitals[index].policy, self.privacy.max_epsilon)

    def fingerprint(self) -> str:
        """A short hash of everything that shapes the data and training: keys caches, guards `--resume`.

        Computed once per object (the config is frozen): clients ask for it on every fit and evaluate."""
        if self._fingerprint is None:
            dump = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
            self._fingerprint = hashlib.sha256(dump).hexdigest()[:16]
        return self._fingerprint


def machine_problems(cfg: StudyConfig, cpus: int | None = None) -> list[str]:
    """Why this machine cannot run the study's simulation (one line per problem; empty: it can).

    Why here and not in the model: Ray never schedules a simulated hospital that asks for more CPUs than
    the machine has, so the run waits forever; but a deployed hospital re-validates the study on its own
    machine, where these simulation-only resources mean nothing, so only the loader on the machine that
    simulates calls this. GPUs are not a study key: every simulated hospital asks Ray for none."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    wanted = cfg.federation.cpus_per_client
    if wanted > cpus:
        return [f"federation.cpus_per_client = {wanted:g}: this machine has {cpus} CPU cores, so no simulated "
                f"hospital could ever start (the run would wait forever); give at most {cpus}"]
    return []


def _one_data_source(cfg: StudyConfig) -> None:
    """A study has one schema: the generator's (no `schema` key, every hospital generated) or a schema
    file (every hospital a file). Mixing the two would put records of two different schemas into one
    model, so it is refused. A study of files takes its outcome from its schema; the study's `outcome` key
    may repeat it but not contradict it."""
    if cfg.study_schema is not None and cfg.outcome != "binary" and cfg.outcome != cfg.study_schema.study.outcome:
        raise ValueError(f"outcome = {cfg.outcome!r}, but the schema's study.outcome is "
                         f"{cfg.study_schema.study.outcome!r}: a study of files takes its outcome from its schema; "
                         "remove `outcome` from the study config")
    files = [h.name for h in cfg.hospitals if h.data is not None]
    generated = [h.name for h in cfg.hospitals if h.data is None]
    if cfg.study_schema is None:
        for h in cfg.hospitals:
            problems = h.generator_problems() if h.data is None else []
            if problems:
                raise ValueError(f"hospital {h.name!r}: " + "; ".join(problems) + " (or give its `data` file and "
                                 "the study's `schema`)")
    if cfg.study_schema is None and files:
        raise ValueError("hospitals: a hospital given as a data file needs the study's schema: add `schema = "
                         "\"path/to/schema.toml\"` at the top of the config")
    if cfg.study_schema is not None and generated and files:
        raise ValueError(f"hospitals: {', '.join(generated)} would be generated and {', '.join(files)} read from "
                         "files; a study has one schema, so give every hospital a `data` file (`fedhealth synth "
                         "--out DIR` writes generated hospitals as files, with their schema)")
    if cfg.study_schema is not None and any(h.records is None for h in cfg.hospitals):
        missing = [h.name for h in cfg.hospitals if h.records is None]
        raise ValueError(f"hospitals: {', '.join(missing)}: give `data` (simulation) or `records` (deployment: the "
                         "hospital's file stays at the hospital)")


def expand_population(pop: PopulationConfig, seed: int) -> list[HospitalConfig]:
    """Draw tiers, regions and log-uniform sizes for `pop.count` hospitals, reproducibly from the seed.

    Tertiary centres are drawn from the upper part of the size range and community clinics from the
    lower part, as in real health systems where record counts span orders of magnitude.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB0B]))
    tiers = [t for t in TIERS if pop.tier_weights.get(t, 0) > 0]
    weights = np.array([pop.tier_weights[t] for t in tiers], dtype=float)
    weights /= weights.sum()
    lo, hi = math.log(pop.records_min), math.log(pop.records_max)
    size_band = {"tertiary": (0.55, 1.0), "secondary": (0.3, 0.8), "community": (0.0, 0.5)}
    hospitals = []
    for i in range(pop.count):
        tier = tiers[int(rng.choice(len(tiers), p=weights))]
        region = pop.regions[int(rng.integers(len(pop.regions)))]
        a, b = size_band[tier]
        records = int(round(math.exp(lo + (hi - lo) * rng.uniform(a, b))))
        hospitals.append(HospitalConfig(name=f"H{i + 1:03d}-{tier[:4]}-{region}", tier=tier,
                                        region=region, records=records))
    return hospitals


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        msg = e["msg"]
        if e["type"] == "literal_error":
            msg = "not allowed; " + msg.replace("Input should be", "choose one of")
        elif e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and section)"
        elif e["type"] == "finite_number":
            msg = NOT_FINITE
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        lines.append(f"{source}: {key}{shown}: {msg}" if key else f"{source}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "config", *, derived: bool = False) -> StudyConfig:
    """Validate a config mapping, raising ConfigError with one line per problem. `derived`: a sibling study
    (`variant`), whose name may be longer than a user's by a suffix."""
    try:
        return StudyConfig.model_validate(data, context={"derived": derived})
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def _coerce(text: str) -> Any:
    """CLI override values are TOML values (`3`, `0.1`, `true`, `"fedprox"`, `[32, 16]`); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):  # nested too deeply: kept as text, refused as a value
        return text


def set_dotted(data: dict[str, Any], key: str, value: Any, what: str | None = None) -> None:
    """Set `data[a][b][c] = value` for `key = "a.b.c"`, making missing tables; a dict value replaces
    that whole table. `what` names the override in the error if a part of the key is not a table."""
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {what or key!r}: {p} is not a section")
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Apply overrides to a raw config mapping: `dotted.key=value` strings (the CLI's `--set`, e.g.
    `federation.rounds=5`, values parsed as TOML scalars) or a mapping of dotted keys to Python values."""
    out = json.loads(json.dumps(data))
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            set_dotted(out, str(key), json.loads(json.dumps(value)))
        return out
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. federation.rounds=5")
        key, _, raw = item.partition("=")
        set_dotted(out, key, _coerce(raw.strip()), item)
    return out


NO_REFERENCES = {"local_only": False, "pooled": False, "non_private_federation": False}


def variant(cfg: StudyConfig, name: str, changes: Mapping[str, Any] | None = None, *, references: bool = True,
            site_policies: bool = True) -> StudyConfig:
    """The same study under another name with `changes` (dotted keys to values, as `apply_overrides`),
    validated like any study: the one way every sibling federation (without DP, at another epsilon,
    another strategy, a coalition, a reference draw) is derived.

    `references=False` trains no local-only, pooled or no-DP references for it; `site_policies=False`
    drops the simulated hospitals' inline policies (simulation only: a policy that caps epsilon, or
    requires SecAgg+, would refuse the counterfactual runs these siblings are)."""
    data = apply_overrides(cfg.model_dump(mode="json", exclude_none=True), dict(changes or {}))
    data["name"] = name
    if not references:
        data["references"] = dict(NO_REFERENCES)
    if not site_policies:
        for h in data["hospitals"]:
            h.pop("policy", None)
    return parse_config(data, f"{cfg.name}: variant {name}", derived=True)


def description_of(cfg: StudyConfig, *, epsilon: float | None = None, bins: int | None = None,
                   min_cell: int | None = None) -> StudyConfig:
    """The study as a cohort description runs it (`fedhealth describe`, and the ServerApp with the run config
    `describe=true`): one round, every hospital, no training privacy mode, and a `[describe]` table. The
    delta is the one the study's training charges at, so a hospital's ledger (kept at one delta) composes the
    description with its training; a hospital-level DP study, whose delta is per hospital, keeps the
    record-level default."""
    data = cfg.model_dump(mode="json", exclude_none=True)
    privacy = data.setdefault("privacy", {})
    if cfg.privacy.mode == "hospital":
        privacy.pop("delta", None)
    else:
        privacy["delta"] = cfg.privacy_delta()
    for key in ("mode", "noise_multiplier", "target_epsilon", "hospital_noise", "min_contributors",
                "colluding_hospitals"):
        privacy.pop(key, None)
    data["describe"] = {k: v for k, v in (("epsilon", epsilon), ("bins", bins), ("min_cell", min_cell))
                        if v is not None}
    federation = data.setdefault("federation", {})
    federation["rounds"] = 1
    federation.setdefault("strategy", {})["fraction_fit"] = 1.0
    return parse_config(data, f"study {cfg.name} (description)")


def config_to_toml(cfg: StudyConfig) -> str:
    """The resolved config (population expanded, defaults filled) as TOML, for the run directory."""
    import tomli_w

    data = cfg.model_dump(mode="json", exclude_none=True)
    return tomli_w.dumps(data)
