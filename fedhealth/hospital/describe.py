"""The hospital's side of a cohort description: its statistics vector, charged, noised and encoded for SecAgg+.

A description is one SecAgg+ round in which the "model" the server sends is a vector of zeros of the study's
statistics layout and the "update" a hospital returns is its own statistics vector
(`fedhealth.statistics`): counts, sums and histograms of its records. The hospital decides, each on its own
and from the study config alone (`fedhealth.statistics.study.description_terms`), what the vector means,
how much noise it carries and what it costs; nothing the server says about these is taken on trust.

What the hospital checks before anything is computed or charged, and declines otherwise (nothing computed,
charged or sent):

- the request is secure (under SecAgg+) unless its site policy allows plain aggregation;
- an exact description (no `describe.epsilon`) only in simulation: a deployed hospital never releases exact
  statistics, and a hospital whose site policy caps epsilon (`policy.max_epsilon`) never releases any
  statistics without noise;
- its site policy's delta limit (`max_delta`, else 1 / (10 x its declared records)) and `min_hospitals`, as
  for training: a server cannot weaken the noise by sending a large `privacy.delta`;
- the vector the server sent is zeros of the length of the hospital's own layout.

With `describe.epsilon`, the release is charged to the hospital's privacy ledger before it leaves, as one
Gaussian step at sample rate 1 (the same accountant and the same budget as its training: one epsilon for
everything it ever released), and refused at its cap. The noise comes from the hospital's own secret, keyed
by the release: a retry of the same release resends the stored vector at no new cost; any other request is
a new release, charged again. What leaves: the encoded vector (inside the masked sum), its index and the
epsilon this study has spent at it; the count of records never leaves except inside the sum.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flwr.common import NDArrays, Scalar

from fedhealth.wire import HOSPITAL_KEY, LOCAL_PREFIX, ROUND_KEY, SECURE_KEY

if TYPE_CHECKING:
    from fedhealth.study.config import StudyConfig
    from fedhealth.study.policy import SitePolicy

log = logging.getLogger(__name__)

NOISE_PURPOSE = "cohort-description-noise"  # the hospital secret's purpose for a description's noise

EXACT_REFUSED = ("a deployed hospital releases no exact statistics (its site policy): the study must set "
                 "describe.epsilon")
EXACT_CAPPED = ("its site policy caps epsilon (policy.max_epsilon), so it releases statistics only with noise: "
                "the study must set describe.epsilon")
PLAIN_REFUSED = "its site policy requires secure aggregation for every release; declining this description"
LAYOUT_MISMATCH = ("the vector the server sent does not match this hospital's statistics layout of the study "
                   "(zeros of its length): the server's code or config differs from the study's")


class Described:
    """What a description request comes to: the vector to send (weight 1) and its figures, or a decline."""

    def __init__(self, vector: np.ndarray | None = None, shared: dict[str, Scalar] | None = None,
                 local: dict[str, Scalar] | None = None, declined: str = "", detail: str = "") -> None:
        self.vector, self.shared, self.local = vector, shared or {}, local or {}
        self.declined, self.detail = declined, detail


def describe_cohort(cfg: StudyConfig, index: int, received: NDArrays, config: dict[str, Scalar], *,
                    policy: SitePolicy | None, simulated: bool, ledger_dir: str,
                    data_file: str | None) -> Described:
    """This hospital's part of the description `cfg.describe` (module docstring: what it checks first).

    Parameters
    ----------
    cfg : StudyConfig
        The study as the hospital parsed it from the request.
    index : int
        The hospital's own position in the study (resolved by the hospital, not told by the server).
    received : list of numpy.ndarray
        What the server sent as the model: must be zeros of the layout's length.
    config : dict
        The request's config (its round; `SECURE_KEY` as the hospital's own mod recorded it).
    policy : SitePolicy or None
        The hospital's own site policy (its file in deployment).
    simulated : bool
        A simulated hospital (only it agrees to an exact description).
    ledger_dir : str
        The hospital's ledger folder (its own in deployment).
    data_file : str or None
        A deployed hospital's own data file.
    """
    from fedhealth.statistics.study import description_terms

    assert cfg.describe is not None
    secure = bool(config.get(SECURE_KEY, False))
    if not secure and (policy is None or policy.require_secure_aggregation):
        return Described(declined=PLAIN_REFUSED)
    if cfg.describe.epsilon is None and not simulated:
        return Described(declined=EXACT_REFUSED)
    if cfg.describe.epsilon is None and policy is not None and policy.max_epsilon is not None:
        return Described(declined=EXACT_CAPPED)
    terms = description_terms(cfg)
    if policy is not None:  # the site policy's delta and aggregate size hold for a description as for training
        from fedhealth.study.policy import DELTA_TOO_LARGE, TOO_FEW_HOSPITALS, delta_limit, hospitals_per_round

        declared = cfg.hospitals[index].records  # the public count: the refusal must not depend on the true one
        if cfg.describe.epsilon is not None and terms.delta > delta_limit(policy, declared):
            return Described(declined=f"{DELTA_TOO_LARGE}; declining this description")
        if hospitals_per_round(len(cfg.hospitals), 1.0) < policy.min_hospitals:
            return Described(declined=f"{TOO_FEW_HOSPITALS}; declining this description")
    if len(received) != 1 or received[0].shape != (terms.length,) or np.any(received[0] != 0):
        return Described(declined=LAYOUT_MISMATCH + "; declining this description")

    slots = group_slots(cfg, index, terms, policy)

    def statistics() -> tuple[np.ndarray, dict[str, Scalar]]:
        """The hospital's vector in every slot it fills: read only once every refusal, the charge included,
        has been decided, so no refusal (and no error) ever depends on the records."""
        from fedhealth.data.cohort_records import cohort_records
        from fedhealth.statistics import local_statistics

        own = local_statistics(terms.layout, cohort_records(cfg, index, data_file).records)
        vector = np.zeros(terms.length)
        for slot in slots:
            terms.slot(vector, slot)[:] = own
        return vector, {"records": float(own[0])}

    filled = {GROUPS_KEY: json.dumps(slots[1:])}
    if terms.noise_multiplier is None:  # exact: simulation only (checked above); nothing to charge
        vector, local = statistics()
        described = Described(vector=_encoded(terms, vector), shared=filled, local=local)
        return _with_site_table(cfg, terms, policy, described, vector)
    return _noised(cfg, index, statistics, received, config, policy, ledger_dir, filled)


GROUPS_KEY = "groups_filled"  # the group slots (1-based positions in `DescriptionTerms.groups`) it filled


def group_slots(cfg: StudyConfig, index: int, terms, policy: SitePolicy | None) -> list[int]:
    """The slots this hospital fills: all hospitals, and its tier's and region's when (a) the study lists at
    least its minimum aggregate (3, or its policy's `min_hospitals`) of that group and (b) it is a simulated
    hospital without a policy, or its policy says `share_group_statistics`. Why (b): the hospital list is the
    server's; a server that lists members of a group who are not there reads the group's slot as this
    hospital's own (noised) vector, so against a deviating server a group slot is a per-site release."""
    from fedhealth.hospital.secure_aggregation import minimum_aggregate

    if policy is not None and not policy.share_group_statistics:
        return [0]
    h = cfg.hospitals[index]
    least = minimum_aggregate(policy)
    out = [0]
    for i, (kind, value) in enumerate(terms.groups, start=1):
        if (kind, value) in (("tier", h.tier), ("region", h.region)) and \
                sum(getattr(other, kind) == value for other in cfg.hospitals) >= least:
            out.append(i)
    return out


SITE_TABLE_KEY = "site_table"  # the hospital's own Table 1 column, sent in the clear when its policy allows
SITE_CURVE_KEY = "site_curve"  # and its own Kaplan-Meier curve (time-to-event), cut where few remain at risk


def _with_site_table(cfg: StudyConfig, terms, policy: SitePolicy | None, described: Described,
                     vector: np.ndarray) -> Described:
    """Add the hospital's own Table 1 column to the clear part of its reply when its policy says
    `share_site_statistics`: computed by the hospital from the very vector it put into the sum (noised when the
    description is), so it costs no epsilon beyond that release; its counts below the larger of its policy's
    and the study's `min_cell` are withheld by the hospital itself, with the figures that would reveal them."""
    if policy is None or not policy.share_site_statistics or described.vector is None:
        return described
    import json

    from fedhealth.statistics import cohort_table

    assert cfg.describe is not None
    below = max(policy.min_cell, cfg.describe.min_cell)
    own = terms.slot(vector, 0)
    table = cohort_table(terms.layout, own, noise_sd=terms.noise_sd, suppress_below=below)
    described.shared[SITE_TABLE_KEY] = json.dumps(table.rows(), allow_nan=False)
    if terms.layout.outcome == "time_to_event":
        from fedhealth.statistics import kaplan_meier

        rows = kaplan_meier(terms.layout, own, noise_sd=terms.noise_sd).rows()
        # the curve stops before the first interval at risk of fewer than `below` records: past it each step
        # would tell a handful of patients' fates
        shown = next((i for i, r in enumerate(rows) if r["at_risk"] < below), len(rows))
        described.shared[SITE_CURVE_KEY] = json.dumps(rows[:shown], allow_nan=False)
    return described


def _encoded(terms, vector: np.ndarray) -> np.ndarray:
    """Every slot in SecAgg+'s integers (`fedhealth.statistics.transport`)."""
    from fedhealth.statistics.transport import encode

    return np.concatenate([encode(terms.layout, terms.slot(vector, i), terms.scale, terms.clipping_range)
                           for i in range(terms.slots)])


def _noised(cfg: StudyConfig, index: int, statistics, received: NDArrays, config: dict[str, Scalar],
            policy: SitePolicy | None, ledger_dir: str, filled: dict[str, Scalar]) -> Described:
    """Charge, then read the records, noise and encode: the charge is written before the records are read
    (so neither a refusal nor a failure to read them can tell the server anything about them for free) and
    before a noised vector exists."""
    from fedhealth.durable import inside
    from fedhealth.privacy.ledger import BudgetExceeded, LedgerError, PrivacyLedger, StaleRound
    from fedhealth.privacy.release import ReleaseStore, model_hash, release_key
    from fedhealth.privacy.round import BUDGET_REASON, LEDGER_REASON, MISSING_RELEASE_REASON, STALE_REASON
    from fedhealth.privacy.secret import HospitalSecret, SecretError, secret_path
    from fedhealth.statistics.study import description_terms
    from fedhealth.study.policy import effective_cap

    terms = description_terms(cfg)
    assert terms.noise_multiplier is not None and cfg.describe is not None
    if not ledger_dir:
        return Described(declined=LEDGER_REASON, detail="a noised description needs a ledger; the hospital has none "
                                                        "configured (node config ledger-dir)")
    name = cfg.hospitals[index].name
    folder = Path(ledger_dir)
    cap = effective_cap(policy, cfg.privacy.max_epsilon)
    server_round = int(config.get(ROUND_KEY, 1))
    study = description_study_id(cfg)
    settings = {"hospital": name, "describe": cfg.describe.model_dump(mode="json"), "layout": terms.layout.digest,
                "groups": [list(g) for g in terms.groups], "cap": cap}
    key = release_key(study, server_round, model_hash(list(received)), settings)
    store = ReleaseStore(folder, name)
    try:
        secret = HospitalSecret.load_or_create(secret_path(folder, name))
        with PrivacyLedger.locked(inside(folder, f"{name}.json"), name, cap, terms.delta) as ledger:
            before = ledger.spent
            earlier = ledger.release_entry(key)
            if earlier is not None:  # a retry of a release already paid for: the same bytes, no new cost
                stored = store.get(key)
                if stored is None:
                    return Described(declined=MISSING_RELEASE_REASON,
                                     detail=f"hospital {name}: description {key[:12]} is charged but "
                                            f"{store.root} lacks it")
                retry = Described(vector=stored[0], shared={**filled, **_shared(ledger, study)}, local={"retry": 1.0})
                return _with_site_table(cfg, terms, policy, retry, stored[-1])
            entry = ledger.charge(server_round, terms.noise_multiplier, 1.0, 1, terms.sensitivity, study=study,
                                  release=key, unit="record")
            vector, local = statistics()
            rng = np.random.default_rng(secret.seed(NOISE_PURPOSE, terms.layout.digest, key))
            noised = vector + rng.normal(0.0, terms.noise_sd, size=terms.length)
            encoded = _encoded(terms, noised)
            store.put(key, [encoded, noised])
            local.update({"epsilon_total": float(ledger.spent), "epsilon_this_release": entry.epsilon - before})
            described = Described(vector=encoded, shared={**filled, **_shared(ledger, study)}, local=local)
            return _with_site_table(cfg, terms, policy, described, noised)
    except BudgetExceeded as refusal:
        return Described(declined=BUDGET_REASON, detail=str(refusal))
    except StaleRound as stale:
        return Described(declined=STALE_REASON, detail=str(stale))
    except (LedgerError, SecretError) as err:
        return Described(declined=LEDGER_REASON, detail=str(err))


def description_study_id(cfg: StudyConfig) -> str:
    """The ledger's study of a description: `<name>#describe:<fingerprint>`, apart from the study's training
    (`<name>:<fingerprint>`), whose privacy terms are fixed by name: a description must neither fix nor break
    them ('#' never appears in a study name)."""
    return f"{cfg.name}#describe:{cfg.fingerprint()}"


def _shared(ledger, study: str) -> dict[str, Scalar]:
    """The epsilon this study has spent at the hospital: a public function of the config (one release at the
    study's noise multiplier), never the hospital's total, which stays in its own log."""
    from fedhealth.privacy.ledger import epsilon_of

    entries = ledger.study_entries(study)
    return {"epsilon": float(epsilon_of([(e.noise_multiplier, e.sample_rate, e.steps) for e in entries],
                                        ledger.delta))}


def as_reply(index: int, described: Described) -> tuple[NDArrays, int, dict[str, Scalar]]:
    """The NumPyClient reply of a description that was not declined: the vector, weight 1, the shared figures
    and the hospital's own (`local.*`, which its audit mod records and removes)."""
    assert described.vector is not None
    local = {f"{LOCAL_PREFIX}{k}": v for k, v in described.local.items()}
    return [np.asarray(described.vector, dtype=np.float64)], 1, {HOSPITAL_KEY: index, **described.shared, **local}
