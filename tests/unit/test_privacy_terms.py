"""A study's privacy terms are fixed by the hospital at the study's first round, and a ledger the hospital
refuses is reported as refused: privacy figures come only from what the hospital accepted.

The server here is the operator who edits a stopped run's `config.resolved.toml` and re-fingerprints
`state.json` so that `--resume` agrees: the coordinator's check passes, so the hospital's own must refuse.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedhealth.data.study_file import load_config
from fedhealth.hospital.app import HospitalClient
from fedhealth.model.initial import initial_weights
from fedhealth.privacy.ledger import PrivacyLedger, ledger_standing
from fedhealth.privacy.terms import TERMS_REASON, TermsChanged, fix_or_check, terms_path
from fedhealth.wire import DECLINED_KEY, study_payload
from tests.support import RECORD_DP, SMOKE

VILLAGE = 2  # village-clinic, the smallest hospital of the smoke study: the fastest to train


def _client(folder: Path) -> HospitalClient:
    """A simulated hospital without a site policy: nothing but its fixed terms refuses DP off or a larger
    delta (a policy that requires DP or caps delta refuses those first, and says so)."""
    return HospitalClient(VILLAGE, None, str(folder))


# ---- terms fixed at round 1, at the hospital ------------------------------------------------------------

@pytest.mark.parametrize("edit", [
    ["privacy.mode=none"],  # DP off for a hospital past its cap: the attack of issue 16
    ["privacy.noise_multiplier=0.3"],  # less noise
    ["privacy.delta=0.001"],  # a larger delta
    ["privacy.max_grad_norm=50.0"],  # a looser clipping bound
])
def test_a_resumed_round_with_other_privacy_terms_is_declined_by_the_hospital(tmp_path: Path,
                                                                                edit: list[str]) -> None:
    cfg = load_config(SMOKE, RECORD_DP)
    client = _client(tmp_path)
    weights, n, _ = client.fit(initial_weights(cfg), study_payload(cfg, 1, ""))
    assert n > 0
    edited = load_config(SMOKE, [*RECORD_DP, *edit])
    assert edited.fingerprint() != cfg.fingerprint()  # re-fingerprinted: the coordinator's check would pass
    ledger_before = (tmp_path / "village-clinic.json").read_bytes()
    sent, n2, metrics = client.fit(weights, study_payload(edited, 2, ""))
    assert n2 == 0 and metrics[DECLINED_KEY] == TERMS_REASON + "; declining this round"
    assert [w.tobytes() for w in sent] == [w.tobytes() for w in weights]  # the model it got, untouched
    detail = str(metrics["local.detail"])  # what the audit mod records in the hospital's audit trail
    assert "fixed its privacy terms at round 1" in detail and "cannot change its privacy terms" in detail
    assert (tmp_path / "village-clinic.json").read_bytes() == ledger_before  # nothing charged
    # the same study, unedited, continues
    assert client.fit(weights, study_payload(cfg, 2, ""))[1] > 0


def test_round_one_starts_a_study_and_a_study_without_dp_fixes_nothing(tmp_path: Path) -> None:
    plain = load_config(SMOKE, [])
    fix_or_check(tmp_path, "village-clinic", plain, 1, 10.0)
    fix_or_check(tmp_path, "village-clinic", plain, 2, 10.0)
    assert not terms_path(tmp_path, "village-clinic").exists()  # no DP, nothing to protect, nothing written
    private = load_config(SMOKE, RECORD_DP)
    fix_or_check(tmp_path, "village-clinic", private, 2, 10.0)  # joined late: fixed at the round it joined
    fix_or_check(tmp_path, "village-clinic", private, 3, 10.0)
    with pytest.raises(TermsChanged, match=r"round 2 \(mode 'record'\); round 3 asks mode 'none'"):
        fix_or_check(tmp_path, "village-clinic", plain, 3, 10.0)
    with pytest.raises(TermsChanged, match="cap 10.0.*asks cap 20.0"):  # the cap the hospital enforced
        fix_or_check(tmp_path, "village-clinic", private, 3, 20.0)
    fix_or_check(tmp_path, "village-clinic", plain, 1, 10.0)  # a new run under the same name: round 1
    stored = json.loads(terms_path(tmp_path, "village-clinic").read_text())
    assert stored["studies"]["smoke"]["terms"]["mode"] == "record"  # a plain start leaves the record alone


def test_an_unreadable_terms_file_refuses(tmp_path: Path) -> None:
    private = load_config(SMOKE, RECORD_DP)
    fix_or_check(tmp_path, "village-clinic", private, 1, 10.0)
    terms_path(tmp_path, "village-clinic").write_text('{"hospital": "village-clinic", "stud')
    with pytest.raises(TermsChanged, match=r"village-clinic.terms: the privacy terms .* cannot be read"):
        fix_or_check(tmp_path, "village-clinic", private, 2, 10.0)


# ---- a refused ledger is reported as refused --------------------------------------------------------------

def _run_dir(tmp_path: Path) -> tuple[Path, object]:
    """A run directory's privacy folder and rounds file as a one-round record-DP run leaves them."""
    from fedhealth.runs import rundir

    cfg = load_config(SMOKE, [*RECORD_DP, "federation.rounds=1"])
    run = tmp_path / "run"
    (run / rundir.PRIVACY_DIR).mkdir(parents=True)
    for i, h in enumerate(cfg.hospitals):
        PrivacyLedger(run / rundir.PRIVACY_DIR / f"{h.name}.json", h.name, 10.0, cfg.privacy_delta()).charge(
            1, 1.0, 0.05, 40 + i, 1.0, study=f"smoke:{cfg.fingerprint()}", release=f"key-{i}")
    rundir.append_jsonl(run / rundir.ROUNDS_FILE, [{"round": 1, "hospitals_trained": [0, 1, 2], "declined": []}])
    return run, cfg


def _forge(path: Path, epsilon: float) -> None:
    data = json.loads(path.read_text())
    data["entries"][-1]["epsilon"] = epsilon
    path.write_text(json.dumps(data))


def test_the_summary_never_shows_a_forged_epsilon_and_names_an_unreadable_ledger(tmp_path: Path) -> None:
    from fedhealth.experiments.simulate import privacy_summary

    run, cfg = _run_dir(tmp_path)
    _forge(run / "privacy" / "city-tertiary.json", 0.0123)
    truncated = run / "privacy" / "village-clinic.json"
    truncated.write_text(truncated.read_text()[:120])
    rows = {h["name"]: h for h in privacy_summary(cfg, run)["hospitals"]}
    city, county, village = rows["city-tertiary"], rows["county-secondary"], rows["village-clinic"]
    assert city["ledger"] == "refused" and city["epsilon"] is None and "altered at round 1" in city["ledger_problem"]
    assert county["ledger"] == "accepted" and county["epsilon"] > 0 and county["rounds_trained"] == [1]
    assert village["ledger"] == "unreadable" and village["epsilon"] is None
    assert str(truncated) in village["ledger_problem"]
    assert city["rounds_trained"] == [1]  # the coordinator's own record, not the untrusted file's
    assert "0.0123" not in json.dumps(rows)


def test_the_results_table_says_refused_where_the_ledger_was_refused(tmp_path: Path, capsys) -> None:
    from fedhealth import cli
    from fedhealth.experiments.simulate import privacy_summary

    run, cfg = _run_dir(tmp_path)
    _forge(run / "privacy" / "county-secondary.json", 0.0123)
    privacy = privacy_summary(cfg, run)
    summary = {"study": "smoke", "strategy": "fedavg", "model": "logreg", "rounds": 1, "privacy": privacy,
               "hospitals": [{"name": h.name, "tier": h.tier, "region": h.region, "records": h.records,
                              "auroc": {"federated": 0.7}} for h in cfg.hospitals],
               "overall": {"auroc": {"federated": 0.7}, "mean_hospital_auroc": {"federated": 0.7}}}
    cli.print_summary_table(summary)
    out = capsys.readouterr().out
    assert "refused ledger" in out and "0.012" not in out
    assert "ledger of county-secondary refused by the hospital" in " ".join(out.split())


def test_ledger_standing_is_the_hospitals_own_verdict(tmp_path: Path) -> None:
    run, cfg = _run_dir(tmp_path)
    path = run / "privacy" / "city-tertiary.json"
    good = ledger_standing(path, "city-tertiary", cfg.privacy_delta())
    assert good.status == "accepted" and good.epsilon > 0 and good.cap == 10.0 and good.rounds == (1,)
    assert ledger_standing(path, "city-tertiary", 1e-3).status == "refused"  # kept at another delta
    assert ledger_standing(path, "village-clinic", cfg.privacy_delta()).status == "refused"  # another's
    assert ledger_standing(run / "privacy" / "none.json", "x", 1e-5).status == "absent"
    path.write_text("[" * 100_000)
    assert ledger_standing(path, "city-tertiary", cfg.privacy_delta()).status == "unreadable"
