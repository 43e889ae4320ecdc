"""A study's privacy terms are fixed by the hospital at the study's first charge, by name, and a ledger the
hospital refuses is reported as refused: privacy figures come only from what the hospital accepted.

The server here is the operator who edits a stopped run's `config.resolved.toml` and re-fingerprints
`state.json` so that `--resume` agrees, or a malicious coordinator crafting the instructions (the round
number and the study name are its word): the coordinator's check passes, so the hospital's own must refuse.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedhealth.data.study_file import load_config
from fedhealth.hospital.app import HospitalClient
from fedhealth.model.initial import initial_weights
from fedhealth.privacy.ledger import PrivacyLedger, ledger_standing
from fedhealth.privacy.round import STALE_REASON
from fedhealth.privacy.terms import (
    TERMS_REASON,
    TermsChanged,
    TermsUnusable,
    check_terms,
    digest,
    noise_used,
    terms_path,
)
from fedhealth.study.config import variant
from fedhealth.wire import DECLINED_KEY, study_payload
from tests.support import RECORD_DP, SMOKE

VILLAGE = 2  # village-clinic, the smallest hospital of the smoke study: the fastest to train


def _client(folder: Path) -> HospitalClient:
    """A simulated hospital without a site policy: nothing but its fixed terms refuses DP off or a larger
    delta (a policy that requires DP or caps delta refuses those first, and says so)."""
    return HospitalClient(VILLAGE, None, str(folder))


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of the hospital's ledger folder (ledger, terms, releases, secret), to show nothing changed."""
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*"))
            if f.is_file() and not f.name.endswith(".lock")}


def _declined(client: HospitalClient, weights, cfg, server_round: int) -> str:
    """The server (the ServerApp, or whoever crafts its messages) asks round `server_round` of `cfg`; the
    hospital must decline it: weight 0, the model it got back untouched. Returns the detail it logged."""
    sent, n, metrics = client.fit(weights, study_payload(cfg, server_round, ""))
    assert n == 0 and DECLINED_KEY in metrics, f"round {server_round} was accepted"
    assert [w.tobytes() for w in sent] == [w.tobytes() for w in weights]
    return str(metrics.get("local.detail", ""))


# ---- terms fixed at the study's first charge, by name, at the hospital ---------------------------------

@pytest.mark.parametrize("edit", [
    ["privacy.mode=none"],  # DP off for a hospital past its cap: the attack of issue 16
    ["privacy.noise_multiplier=0.3"],  # less noise
    ["privacy.delta=0.001"],  # a larger delta
    ["privacy.max_grad_norm=50.0"],  # a looser clipping bound
    ["training.batch_size=128"],  # a larger sampling rate
    ["training.local_epochs=3"],  # more DP steps per round
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


@pytest.mark.parametrize("attack", [
    pytest.param([(["privacy.mode=none"], 1), (["privacy.mode=none"], 1), (["privacy.mode=none"], 1)],
                 id="dp-off-at-round-1-again-and-again"),
    pytest.param([(["privacy.noise_multiplier=0.3"], 1), (["privacy.noise_multiplier=0.3"], 4)],
                 id="weaker-noise-at-round-1-then-round-4-under-it"),
    pytest.param([(["privacy.delta=0.001"], 1), (["privacy.max_grad_norm=50.0"], 1)],
                 id="larger-delta-or-looser-clip-at-round-1"),
    pytest.param([(["privacy.mode=none"], 3)], id="dp-off-at-round-3"),
])
def test_a_server_sending_round_1_again_cannot_reset_the_terms(tmp_path: Path,
                                                               attack: list[tuple[list[str], int]]) -> None:
    """Finding 3: the round number is the server's word. DP fixed at rounds 1-2; every later request of the
    same study name asking other terms is declined, round 1 included, and changes no file of the hospital."""
    cfg = load_config(SMOKE, RECORD_DP)
    client = _client(tmp_path)
    weights = initial_weights(cfg)
    for r in (1, 2):
        weights, n, _ = client.fit(weights, study_payload(cfg, r, ""))
        assert n > 0
    before = _files(tmp_path)
    for edit, server_round in attack:
        detail = _declined(client, weights, load_config(SMOKE, [*RECORD_DP, *edit]), server_round)
        assert "not by a resume nor by a new round 1" in detail
        assert _files(tmp_path) == before  # terms, ledger, releases: nothing written
    assert client.fit(weights, study_payload(cfg, 3, ""))[1] > 0  # the study itself goes on


def test_a_deleted_terms_file_is_a_refusal_while_the_ledger_holds_charges(tmp_path: Path) -> None:
    """Finding 3: deleting `<hospital>.terms` and sending DP off (or anything) is refused, never a reset."""
    cfg = load_config(SMOKE, RECORD_DP)
    client = _client(tmp_path)
    weights = initial_weights(cfg)
    for r in (1, 2):
        weights, _, _ = client.fit(weights, study_payload(cfg, r, ""))
    terms_path(tmp_path, "village-clinic").unlink()
    before = _files(tmp_path)
    for asked in (load_config(SMOKE, []), load_config(SMOKE, [*RECORD_DP, "privacy.noise_multiplier=0.3"]), cfg):
        detail = _declined(client, weights, asked, 5)
        assert "village-clinic.terms: the terms file is missing while the ledger holds 2 charge(s) for study " \
               "'smoke'; restore it from backup" in detail
    assert _files(tmp_path) == before and not terms_path(tmp_path, "village-clinic").exists()
    # a terms file that lost the study's entry (other studies kept) is the same refusal
    terms_path(tmp_path, "village-clinic").write_text(json.dumps({"hospital": "village-clinic", "studies": {}}))
    with pytest.raises(TermsUnusable, match="holds no terms for it while the ledger holds 2 charge"):
        check_terms(tmp_path, "village-clinic", cfg, VILLAGE, 5, 10.0)


def _edit_terms(folder: Path, recompute_digest: bool, **changes) -> None:
    path = terms_path(folder, "village-clinic")
    data = json.loads(path.read_text())
    fixed = data["studies"]["smoke"]
    fixed["terms"].update(changes)
    if "noise_multiplier" in changes:
        fixed["noise"] = changes["noise_multiplier"]
    if recompute_digest:
        fixed["digest"] = digest(fixed["terms"], fixed["noise"])
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("recompute_digest", [False, True], ids=["digest-left", "digest-recomputed"])
def test_an_edited_terms_file_is_detected_through_the_ledger(tmp_path: Path, recompute_digest: bool) -> None:
    """Finding 3: each charge records the terms' digest inside the ledger's hash chain, so a terms file edited
    to the weaker terms the server then asks for (its own digest recomputed or not) is refused."""
    cfg = load_config(SMOKE, RECORD_DP)
    client = _client(tmp_path)
    weights, _, _ = client.fit(initial_weights(cfg), study_payload(cfg, 1, ""))
    entry = PrivacyLedger.reading(tmp_path / "village-clinic.json", "village-clinic").entries[-1]
    stored = json.loads(terms_path(tmp_path, "village-clinic").read_text())["studies"]["smoke"]
    assert entry.terms == stored["digest"] and entry.noise_multiplier == stored["noise"] == 1.0
    _edit_terms(tmp_path, recompute_digest, noise_multiplier=0.3)
    before = _files(tmp_path)
    weaker = load_config(SMOKE, [*RECORD_DP, "privacy.noise_multiplier=0.3"])
    detail = _declined(client, weights, weaker, 2)
    assert "restore the file from backup" in detail and "(edited)" in detail
    assert _files(tmp_path) == before


def test_a_round_the_ledger_declines_fixes_no_terms_and_a_round_going_back_is_stale(tmp_path: Path) -> None:
    """Finding 3: the terms are checked before anything is written and written by the ledger's accepted
    charge only: a first round over the cap fixes nothing; a round older than one charged (the ledger's
    StaleRound, per study) is declined with every file unchanged."""
    over_cap = load_config(SMOKE, [*RECORD_DP, "privacy.max_epsilon=0.01"])
    client = _client(tmp_path)
    weights = initial_weights(over_cap)
    _declined(client, weights, over_cap, 1)
    assert not terms_path(tmp_path, "village-clinic").exists()  # declined by the cap: nothing fixed
    cfg = load_config(SMOKE, RECORD_DP)
    weights, n, _ = client.fit(weights, study_payload(cfg, 3, ""))
    assert n > 0
    before = _files(tmp_path)
    _sent, n, metrics = client.fit(weights, study_payload(cfg, 2, ""))
    assert n == 0 and metrics[DECLINED_KEY] == STALE_REASON
    assert _files(tmp_path) == before


def test_terms_are_fixed_by_name_and_siblings_keep_their_own(tmp_path: Path) -> None:
    plain = load_config(SMOKE, [])
    for r in (1, 2):
        fixed = check_terms(tmp_path, "village-clinic", plain, VILLAGE, r, 10.0)
        assert fixed.pending is None and fixed.noise is None
    assert not terms_path(tmp_path, "village-clinic").exists()  # no DP, nothing to protect, nothing written
    private = load_config(SMOKE, RECORD_DP)
    ledger = PrivacyLedger(tmp_path / "village-clinic.json", "village-clinic", 10.0, private.privacy_delta())
    fixed = check_terms(tmp_path, "village-clinic", private, VILLAGE, 2, 10.0)  # joined late: fixed at round 2
    ledger.charge(2, fixed.noise, 0.1, 10, 1.0, study=f"smoke:{private.fingerprint()}", release="k2",
                  terms=fixed.digest, before_write=fixed.bind)
    assert check_terms(tmp_path, "village-clinic", private, VILLAGE, 3, 10.0).pending is None
    with pytest.raises(TermsChanged, match=r"round 2 \(mode 'record'\); round 3 asks mode 'none'"):
        check_terms(tmp_path, "village-clinic", plain, VILLAGE, 3, 10.0)
    with pytest.raises(TermsChanged, match="cap 10.0.*asks cap 20.0"):  # the cap the hospital enforced
        check_terms(tmp_path, "village-clinic", private, VILLAGE, 3, 20.0)
    # a sweep sibling or a coalition has its own name: its own terms, the first study's untouched
    sibling = variant(private, "smoke-eps-1", {"privacy.noise_multiplier": 0.5}, references=False)
    assert check_terms(tmp_path, "village-clinic", sibling, VILLAGE, 1, 10.0).pending is not None


def test_a_charge_racing_another_with_other_terms_is_aborted(tmp_path: Path) -> None:
    """Two requests of one study checked at once, before either is charged, with other terms: the first
    charge fixes its terms; the second charge re-checks them under the ledger's lock and writes nothing."""
    a = load_config(SMOKE, RECORD_DP)
    b = load_config(SMOKE, [*RECORD_DP, "privacy.noise_multiplier=0.3"])
    first = check_terms(tmp_path, "village-clinic", a, VILLAGE, 1, 10.0)
    second = check_terms(tmp_path, "village-clinic", b, VILLAGE, 1, 10.0)
    ledger = PrivacyLedger(tmp_path / "village-clinic.json", "village-clinic", 1e6, a.privacy_delta())
    ledger.charge(1, first.noise, 0.1, 10, 1.0, study=f"smoke:{a.fingerprint()}", release="a",
                  terms=first.digest, before_write=first.bind)
    before = _files(tmp_path)
    with pytest.raises(TermsChanged, match="noise_multiplier 1.0.*asks noise_multiplier 0.3"):
        ledger.charge(1, second.noise, 0.1, 10, 1.0, study=f"smoke:{b.fingerprint()}", release="b",
                      terms=second.digest, before_write=second.bind)
    assert _files(tmp_path) == before and len(ledger.entries) == 1


def test_an_unreadable_terms_file_refuses(tmp_path: Path) -> None:
    private = load_config(SMOKE, RECORD_DP)
    fixed = check_terms(tmp_path, "village-clinic", private, VILLAGE, 1, 10.0)
    fixed.bind(PrivacyLedger(tmp_path / "village-clinic.json", "village-clinic", 10.0, private.privacy_delta()))
    terms_path(tmp_path, "village-clinic").write_text('{"hospital": "village-clinic", "stud')
    with pytest.raises(TermsUnusable, match=r"village-clinic.terms: the privacy terms .* cannot be read"):
        check_terms(tmp_path, "village-clinic", private, VILLAGE, 2, 10.0)


# ---- a target-epsilon study keeps the noise of its first charge (finding 4) ---------------------------

TARGET_DP = ["privacy.mode=record", "privacy.target_epsilon=8.0", "privacy.max_epsilon=50.0"]


@pytest.mark.parametrize("edit", [["federation.rounds=1"], ["training.batch_size=32"]],
                         ids=["fewer-rounds", "smaller-batch"])
def test_a_target_epsilon_study_is_never_recalibrated_on_resume(tmp_path: Path, edit: list[str]) -> None:
    """Finding 4: a resume with fewer rounds (or another batch size) gets a new fingerprint, so a new study
    id; calibrated afresh it would get less noise per round, ignoring what round 1 spent. The terms (by name)
    hold the rounds planned, the sampling rate and the noise of the first charge: the request is refused,
    and the honest resume reuses the fixed noise instead of calibrating again."""
    cfg = load_config(SMOKE, TARGET_DP)
    client = _client(tmp_path)
    weights, n, _ = client.fit(initial_weights(cfg), study_payload(cfg, 1, ""))
    assert n > 0
    fixed = json.loads(terms_path(tmp_path, "village-clinic").read_text())["studies"]["smoke"]
    assert fixed["terms"]["rounds_planned"] == cfg.federation.rounds and fixed["noise"] > 0
    cheaper = load_config(SMOKE, [*TARGET_DP, *edit])
    assert noise_used(cheaper, VILLAGE) != fixed["noise"]  # what a fresh calibration would have used
    before = _files(tmp_path)
    detail = _declined(client, weights, cheaper, 2)
    assert "fixed its privacy terms at round 1" in detail
    assert _files(tmp_path) == before
    assert client.fit(weights, study_payload(cfg, 2, ""))[1] > 0  # the unchanged study resumes
    entries = PrivacyLedger.reading(tmp_path / "village-clinic.json", "village-clinic").entries
    assert [e.noise_multiplier for e in entries] == [fixed["noise"]] * 2


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
