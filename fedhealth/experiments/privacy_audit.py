"""`fedhealth audit-privacy RUN`: an empirical membership-inference audit of a simulated run's final model.

For every hospital, the members are its training records and the non-members its held-out test records,
both regenerated from the run's resolved config (the seeded generator and split give exactly the records
the federation used). Two attacks score each record from the final global model (see
:mod:`fedhealth.metrics.membership`): the loss attack, and the calibrated attack, which compares the target
model's loss with that of reference models that never saw the record.

**Reference models.** Each is trained centrally (plain PyTorch through :mod:`fedhealth.model.training`) on a
fresh synthetic draw of *every* hospital's profile (same tier, region and record count, another seed,
the same train fraction), pooled, with the study's model, initial weights, optimiser, batch size and
total local-training budget (rounds x local epochs), as the pooled reference of a run is. The audited
model was trained on all hospitals together, and the federated model matches the pooled one closely
(docs/results.md), so a pooled model on other records is the closest cheap stand-in for "the federation, had this
record not been in it"; one reference then serves every hospital. A record-level DP run's references are
trained with DP-SGD at the noise that spends the study's target epsilon on a training set of their size
(the attacker knows the training algorithm); hospital-level DP and the server optimisers (FedAdam,
q-FedAvg) are not re-enacted: their references are trained with plain SGD. A fresh draw also draws its
own site calibration offsets, so the references see a slightly different lab than the target did: this
can only weaken the calibration, so the calibrated figure stays a lower bound.

**Only simulations.** The audit needs every record the model was trained on and a held-out set from the
same hospital. In a deployment (or a study on hospitals' own files) those records never leave their
hospital, so a run whose hospitals are file-backed is refused: the attack would have to run inside each
hospital, which is not what this command is.

**What it proves.** An AUC whose interval lies above 0.5 shows the model leaks membership. An AUC near 0.5
shows only that *these* attacks find nothing at this sample size: an empirical audit is a lower bound on
leakage, never a proof of differential privacy (docs/privacy-audit.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from fedhealth.data.hospitals import HospitalSplit, load_hospital
from fedhealth.data.study_file import load_config
from fedhealth.errors import RunDirectoryError
from fedhealth.metrics.membership import (
    CALIBRATED_ATTACK,
    LOSS_ATTACK,
    AttackResult,
    calibrated_attack_scores,
    evaluate_attack,
    loss_attack_scores,
    per_record_loss,
)
from fedhealth.runs import rundir
from fedhealth.seeding import derive_seed
from fedhealth.study.config import StudyConfig, variant

log = logging.getLogger(__name__)
AUDIT_FILE = rundir.PRIVACY_AUDIT_FILE
DEFAULT_REFERENCES = 3
ATTACKS = {
    LOSS_ATTACK: "loss threshold (Yeom et al. 2018): score = minus the final model's loss on the record",
    CALIBRATED_ATTACK: "difficulty-calibrated loss (Watson et al. 2022; Carlini et al. 2022): score = mean loss "
                       "of reference models that never saw the record minus the final model's loss",
}


class AuditError(RunDirectoryError, ValueError):
    """A run that cannot be audited (not completed, file-backed, already audited); the message says how to fix."""


def auditable_config(run_dir: Path, force: bool = False) -> StudyConfig:
    """The run's resolved config, if the run can be audited; AuditError (or RunDirError) saying why not."""
    state = rundir.read_state(run_dir)
    if state.get("status") != "completed":
        raise AuditError(f"{run_dir}: {rundir.describe_state(run_dir)}; the audit attacks the final model, so the "
                         f"run must be completed first (`fedhealth simulate --resume {run_dir}`)")
    cfg = load_config(run_dir / rundir.CONFIG_FILE)
    if cfg.from_files:
        raise AuditError(f"{run_dir}: study {cfg.name!r} reads its hospitals from their own files; a "
                         "membership-inference audit needs each hospital's training and held-out records, which "
                         "only a simulation on generated hospitals has at hand (in a deployment they never leave "
                         "the hospital). Audit a synthetic study of the same shape instead (`fedhealth synth`)")
    if (run_dir / AUDIT_FILE).exists() and not force:
        raise AuditError(f"{run_dir / AUDIT_FILE} exists; pass --force to replace it")
    return cfg


def final_weights(cfg: StudyConfig, run_dir: Path) -> list[np.ndarray]:
    """The released model: model.npz, or the last round's checkpoint for a run that has none (a sweep's)."""
    path = run_dir / rundir.MODEL_FILE
    if not path.is_file():
        path = rundir.checkpoint_path(run_dir, cfg.federation.rounds)
    weights, _ = rundir.load_weights(path)
    return weights


def _logits(cfg: StudyConfig, weights: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    import torch

    from fedhealth.model import set_weights
    from fedhealth.model.outcomes import build_study_model

    model = build_study_model(cfg, x.shape[1], seed=cfg.seed)
    set_weights(model, weights)
    model.eval()
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32)).double().numpy()


def _record_loss(cfg: StudyConfig, logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each record's training loss under the model: what the attacks read. The binary cross-entropy of
    `per_record_loss`, or the record's own term of the study's loss (`reduction="none"`): a time-to-event
    record's logistic-hazard negative log-likelihood, or its Cox partial-likelihood term, risk sets formed over
    the records scored together."""
    if cfg.outcome_kind == "binary":
        return per_record_loss(logits, y)
    import torch

    from fedhealth.model.outcomes import study_loss

    with torch.no_grad():
        return study_loss(cfg)(torch.as_tensor(logits), torch.as_tensor(y, dtype=torch.float64),
                               reduction="none").double().numpy()


def reference_draw(cfg: StudyConfig, k: int, seed: int) -> StudyConfig:
    """The study with another data seed: every hospital's profile drawn again, none of the study's records."""
    draw_seed = derive_seed(seed, "membership-reference", k) % 2**32
    if draw_seed == cfg.seed:  # a 1 in 2**32 coincidence would hand the references the target's own records
        draw_seed = (draw_seed + 1) % 2**32
    return variant(cfg, f"{cfg.name}-reference-{k}", {"seed": draw_seed})


def train_reference(cfg: StudyConfig, draw: StudyConfig, k: int, seed: int) -> list[np.ndarray]:
    """One reference model on the draw's pooled training records, trained as the study trains (see module)."""
    from fedhealth.model import get_weights, set_weights
    from fedhealth.model.initial import initial_weights
    from fedhealth.model.outcomes import build_study_model, study_loss
    from fedhealth.model.training import train

    splits = [load_hospital(draw, i) for i in range(len(draw.hospitals))]
    x = np.concatenate([s.x_train for s in splits])
    y = np.concatenate([s.y_train for s in splits])
    model = build_study_model(cfg, x.shape[1], seed=cfg.seed)
    set_weights(model, initial_weights(cfg))  # the target's own starting point: only the data differ
    t = cfg.training
    epochs = cfg.federation.rounds * t.local_epochs
    train_seed = derive_seed(seed, "membership-reference-training", k)
    if cfg.privacy.mode == "record":
        from fedhealth.privacy.dp import calibrate_noise, dp_schedule, train_private

        # The attacker's own model, not a release: it may use any seed, and the pooled draw's own schedule.
        schedule = dp_schedule(len(y), t.batch_size)
        sigma = cfg.privacy.noise_multiplier
        if sigma is None:
            assert cfg.privacy.target_epsilon is not None
            sigma = calibrate_noise(cfg.privacy.target_epsilon, cfg.privacy_delta(), schedule.sample_rate,
                                    epochs * schedule.steps_per_epoch)
        train_private(model, x, y, epochs=epochs, schedule=schedule, learning_rate=t.learning_rate,
                      momentum=t.momentum, noise_multiplier=sigma, max_grad_norm=cfg.privacy.max_grad_norm,
                      noise_seed=train_seed, sampling_seed=derive_seed(seed, "membership-reference-sampling", k),
                      loss=study_loss(cfg))
    else:
        train(model, x, y, epochs=epochs, batch_size=t.batch_size, learning_rate=t.learning_rate,
              momentum=t.momentum, weight_decay=t.weight_decay, seed=train_seed, loss=study_loss(cfg))
    return get_weights(model)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Train and score on one thread: these models are too small to gain from more, and on a busy machine
    PyTorch's second thread waiting for a core made one reference model 10 to 20 times slower (0.9 s vs 10-21 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _records(split: HospitalSplit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, is_member): the hospital's training records, then its held-out ones."""
    x = np.concatenate([split.x_train, split.x_test])
    y = np.concatenate([split.y_train, split.y_test])
    member = np.r_[np.ones(len(split.y_train), dtype=bool), np.zeros(len(split.y_test), dtype=bool)]
    return x, y, member


def _attacks(target: np.ndarray, references: np.ndarray, member: np.ndarray, seed: int,
             confidence: float) -> dict[str, dict[str, Any]]:
    scores = {LOSS_ATTACK: loss_attack_scores(target), CALIBRATED_ATTACK: calibrated_attack_scores(target, references)}
    results: dict[str, AttackResult] = {
        name: evaluate_attack(s, member, confidence=confidence, seed=derive_seed(seed, "membership-bootstrap", name))
        for name, s in scores.items()}
    return {name: r.as_dict() for name, r in results.items()}


def _epsilons(run_dir: Path) -> dict[str, float]:
    """Epsilon each hospital spent, as the run's summary reports it (record-level DP runs); empty otherwise."""
    path = run_dir / rundir.SUMMARY_FILE
    privacy = rundir.read_json(path).get("privacy") if path.is_file() else None
    if not privacy:
        return {}
    if privacy.get("mode") == "hospital":
        return {"every hospital": privacy["epsilon"]}
    return {h["name"]: h["epsilon"] for h in privacy.get("hospitals", [])}


def audit_run(run_dir: Path, references: int = DEFAULT_REFERENCES, seed: int | None = None,
              force: bool = False, confidence: float = 0.95) -> dict[str, Any]:
    """Attack the run's final model per hospital and over all records; write and return privacy_audit.json.

    Parameters
    ----------
    run_dir : Path
        A completed simulation run directory on generated hospitals.
    references : int
        Reference models for the calibrated attack (each costs one pooled training of the study's budget).
    seed : int, optional
        Seed of the reference draws, their training and the bootstrap (default: the study's seed).
    force : bool
        Replace an existing privacy_audit.json.
    confidence : float
        Coverage of each AUC's interval.
    """
    if references < 1:
        raise AuditError(f"--references {references}: the calibrated attack needs at least 1 reference model")
    run_dir = Path(run_dir)
    cfg = auditable_config(run_dir, force)
    seed = cfg.seed if seed is None else seed
    started = time.perf_counter()
    with _one_torch_thread():
        splits = [load_hospital(cfg, i) for i in range(len(cfg.hospitals))]
        records = [_records(s) for s in splits]
        weights = final_weights(cfg, run_dir)
        target = [_record_loss(cfg, _logits(cfg, weights, x), y) for x, y, _ in records]
        reference_weights = []
        for k in range(references):
            reference_weights.append(train_reference(cfg, reference_draw(cfg, k, seed), k, seed))
            log.info("membership audit: reference model %d of %d trained", k + 1, references)
        ref = [np.stack([_record_loss(cfg, _logits(cfg, w, x), y) for w in reference_weights]) for x, y, _ in records]
    epsilons = _epsilons(run_dir)
    hospitals = []
    for s, (_, _, member), t, r in zip(splits, records, target, ref, strict=True):
        h = s.hospital
        hospitals.append({"name": h.name, "tier": h.tier, "region": h.region, "records": len(member),
                          "epsilon": epsilons.get(h.name, epsilons.get("every hospital")),
                          "attacks": _attacks(t, r, member, derive_seed(seed, h.name), confidence)})
    overall = _attacks(np.concatenate(target), np.concatenate(ref, axis=1),
                       np.concatenate([m for _, _, m in records]), derive_seed(seed, "all"), confidence)
    result = {
        "study": cfg.name, "privacy_mode": cfg.privacy.mode,
        "members": "each hospital's training records", "non_members": "each hospital's held-out test records",
        "attacks": ATTACKS, "auc_interval": f"{confidence:.0%} stratified bootstrap over records (percentile, SciPy)",
        "references": {"count": references, "seed": seed,
                       "trained_on": "a fresh synthetic draw of every hospital's profile, pooled (same sizes)",
                       "training": "DP-SGD as the study's" if cfg.privacy.mode == "record" else "plain SGD",
                       "epochs": cfg.federation.rounds * cfg.training.local_epochs},
        "hospitals": hospitals,
        "overall": {"records": int(sum(len(m) for _, _, m in records)), "attacks": overall,
                    "leak_detected": any(a["ci_low"] > 0.5 for a in overall.values())},
        "seconds": time.perf_counter() - started,
    }
    rundir.write_json(run_dir / AUDIT_FILE, result)
    return result
