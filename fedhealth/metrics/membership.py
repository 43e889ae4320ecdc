"""Membership-inference attacks on a trained model: the arithmetic, with no Flower and no torch.

A membership-inference attack asks, for one patient record, "was this record in the training set?"
using only what the released model says about it. If an attacker can tell members from non-members
better than chance, the model leaks who was treated at a hospital, which is itself sensitive.
Differential privacy bounds that advantage; this module *measures* it empirically:

- the **loss attack** (Yeom et al., 2018) scores a record by minus the model's loss on it: models fit
  their training records better than records they never saw;
- the **calibrated attack** (difficulty calibration: Watson et al., 2022; Carlini et al., 2022) scores
  a record by how much lower the target model's loss is than that of reference models trained the same
  way on other data, which did not see the record. It removes what makes a record easy or hard for any
  model (a healthy 30-year-old is easy to predict whether seen or not), leaving what memorisation adds.

Each attack is summarised by the area under its ROC curve (AUC) over members (label 1) and non-members
(label 0): 0.5 is chance, i.e. nothing measurable leaks to this attack; 1.0 is perfect identification.
AUC does not depend on how many members there are per non-member, so unbalanced sets (75 % of a
hospital's records train, 25 % are held out) need no subsampling. The confidence interval is a
stratified bootstrap over records (members and non-members resampled separately, as they were drawn
separately), from SciPy; it covers the sampling of records, not the randomness of training.

Only aggregate figures leave this module (AUC, interval, counts); never a record's score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

LOSS_ATTACK = "loss"
CALIBRATED_ATTACK = "calibrated"


def per_record_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of each record, from the model's logits (the training loss, unreduced).

    Computed as ``softplus(z) - y z`` in a numerically stable form, so a record the model fits almost
    perfectly keeps a tiny but ordered loss instead of being clipped to one shared floor: the attack
    ranks records, and ties at a clip would hide exactly the memorised ones.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if z.shape != y.shape:
        raise ValueError(f"logits {z.shape} and labels {y.shape} differ in shape")
    return np.maximum(z, 0.0) - z * y + np.log1p(np.exp(-np.abs(z)))


def loss_attack_scores(target_loss: np.ndarray) -> np.ndarray:
    """Loss-threshold attack: higher score = more likely a member. Score = minus the target's loss."""
    return -np.asarray(target_loss, dtype=np.float64)


def calibrated_attack_scores(target_loss: np.ndarray, reference_losses: np.ndarray) -> np.ndarray:
    """Difficulty-calibrated attack: mean loss of the reference models minus the target model's loss.

    Parameters
    ----------
    target_loss : (n,) array
        The audited model's loss on each record.
    reference_losses : (k, n) array
        The loss of each of k reference models on the same records; none of them was trained on any of
        these records, so their loss says how hard a record is for a model that never saw it.

    Returns
    -------
    (n,) array
        Higher = the target fits the record better than an outsider would = more likely a member.
    """
    target = np.asarray(target_loss, dtype=np.float64)
    refs = np.atleast_2d(np.asarray(reference_losses, dtype=np.float64))
    if refs.shape[1:] != target.shape or refs.shape[0] < 1:
        raise ValueError(f"reference losses {refs.shape} must be (k >= 1, {target.shape[0]})")
    return refs.mean(axis=0) - target


def _auc_statistic(members: np.ndarray, non_members: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC of members over non-members (Mann-Whitney U / (n1 n0), ties counted one half), vectorised
    over leading axes: SciPy's bootstrap hands it every resample at once."""
    from scipy.stats import rankdata

    members = np.moveaxis(np.asarray(members, dtype=np.float64), axis, -1)
    non_members = np.moveaxis(np.asarray(non_members, dtype=np.float64), axis, -1)
    n1, n0 = members.shape[-1], non_members.shape[-1]
    ranks = rankdata(np.concatenate([members, non_members], axis=-1), axis=-1)
    return (ranks[..., :n1].sum(axis=-1) - n1 * (n1 + 1) / 2.0) / (n1 * n0)


@dataclass(frozen=True)
class AttackResult:
    """One attack on one set of records: its AUC, a confidence interval, and how many records it saw."""

    auc: float
    ci_low: float
    ci_high: float
    members: int
    non_members: int
    confidence: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def evaluate_attack(scores: np.ndarray, is_member: np.ndarray, *, confidence: float = 0.95,
                    n_resamples: int = 2000, seed: int = 0) -> AttackResult:
    """AUC of an attack (scikit-learn's ``roc_auc_score``) and its stratified bootstrap interval.

    Parameters
    ----------
    scores : (n,) array
        Attack score per record, higher = "member".
    is_member : (n,) bool array
        True for a record the model was trained on.
    confidence : float
        Coverage of the interval (0.95: a 95 % interval).
    n_resamples, seed : int
        Bootstrap resamples and the seed of their generator, so an audit is reproducible.

    Raises
    ------
    ValueError
        With fewer than two members or two non-members (no AUC, or no interval, exists).
    """
    from scipy.stats import bootstrap
    from sklearn.metrics import roc_auc_score

    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(is_member, dtype=bool)
    if s.shape != m.shape:
        raise ValueError(f"scores {s.shape} and membership {m.shape} differ in shape")
    n1, n0 = int(m.sum()), int((~m).sum())
    if n1 < 2 or n0 < 2:
        raise ValueError(f"an attack AUC needs at least 2 members and 2 non-members (got {n1} and {n0})")
    auc = float(roc_auc_score(m, s))
    if np.all(s == s[0]):  # every record scored alike: AUC exactly 0.5, no spread to resample
        return AttackResult(auc, auc, auc, n1, n0, confidence)
    ci = bootstrap((s[m], s[~m]), _auc_statistic, n_resamples=n_resamples, confidence_level=confidence,
                   method="percentile", vectorized=True, batch=max(1, 4_000_000 // s.size),
                   rng=np.random.default_rng(seed)).confidence_interval
    return AttackResult(auc, float(ci.low), float(ci.high), n1, n0, confidence)
