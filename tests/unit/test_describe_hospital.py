"""The hospital's side of `fedhealth describe` (`fedhealth.hospital.describe`), asked as an adversarial server
would ask it: no federation, one request at a time, straight to `describe_cohort` or to `HospitalClient.fit`.

What a hospital must refuse before it computes or charges anything (an exact description when deployed or
capped, a plain request its policy forbids, a "model" that is not the layout's zeros), and how it spends:
one charge per release, a retry of the same release resent byte for byte at no cost, any other request a
new release, nothing past its cap, and noise that only its own secret determines. The federations:
tests/integration/test_describe_federation.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fedhealth.api import description_study
from fedhealth.hospital.describe import (
    EXACT_CAPPED,
    EXACT_REFUSED,
    LAYOUT_MISMATCH,
    PLAIN_REFUSED,
    describe_cohort,
)
from fedhealth.privacy.ledger import epsilon_of, read_ledger_file
from fedhealth.privacy.round import BUDGET_REASON
from fedhealth.statistics import local_statistics
from fedhealth.statistics.study import description_terms
from fedhealth.statistics.transport import decode, sum_cells
from fedhealth.study.policy import DELTA_TOO_LARGE, TOO_FEW_HOSPITALS, SitePolicy
from fedhealth.wire import DECLINED_KEY, ROUND_KEY, SECURE_KEY, study_payload
from tests.support import THREE_SMALL_HOSPITALS

SMALL = """name = "describe-small"
seed = 5
""" + THREE_SMALL_HOSPITALS


@pytest.fixture
def study(tmp_path):
    """The small study as `fedhealth describe` runs it, at the given epsilon / bins."""
    path = tmp_path / "study.toml"
    path.write_text(SMALL)

    def build(epsilon: float | None = None, bins: int | None = None):
        return description_study(path, epsilon=epsilon, bins=bins)

    return build


@pytest.fixture
def nothing_computed(monkeypatch):
    """Fail the test if the hospital reads its records or computes its statistics."""
    import fedhealth.data.cohort_records as records_module
    import fedhealth.statistics as statistics_module

    def forbidden(*_a, **_k):
        raise AssertionError("the hospital read or described its records before declining")

    monkeypatch.setattr(records_module, "cohort_records", forbidden)
    monkeypatch.setattr(statistics_module, "local_statistics", forbidden)


def _zeros(cfg) -> list[np.ndarray]:
    return [np.zeros(description_terms(cfg).length)]


def _ask(cfg, ledger_dir: Path | str = "", *, index: int = 0, received=None, secure: bool = True,
         policy: SitePolicy | None = None, simulated: bool = True, server_round: int = 1):
    return describe_cohort(cfg, index, _zeros(cfg) if received is None else received,
                           {SECURE_KEY: secure, ROUND_KEY: server_round}, policy=policy, simulated=simulated,
                           ledger_dir=str(ledger_dir), data_file=None)


def _entries(folder: Path, name: str = "south") -> list[dict]:
    path = folder / f"{name}.json"
    return read_ledger_file(path, name)["entries"] if path.exists() else []


def _decoded(cfg, vector: np.ndarray) -> np.ndarray:
    terms = description_terms(cfg)
    return np.concatenate([decode(terms.layout, terms.slot(vector, i), terms.scale) for i in range(terms.slots)])


def _exact(cfg, index: int = 0) -> np.ndarray:
    from fedhealth.data.cohort_records import cohort_records

    return local_statistics(description_terms(cfg).layout, cohort_records(cfg, index).records)


# ---- refusals: nothing computed, nothing charged ----

def test_a_deployed_hospital_declines_an_exact_description_computing_and_charging_nothing(tmp_path, study,
                                                                                         nothing_computed):
    """Through the hospital's own client, as deployed (hospital-name, its own ledger folder): the server's
    exact request (no describe.epsilon) comes back declined with EXACT_REFUSED and weight 0, and neither its
    ledger folder nor the one the server names holds anything. A permissive policy does not change that."""
    from fedhealth.hospital.app import HospitalClient
    from fedhealth.hospital.node_config import NodeSettings

    cfg = study()
    own = tmp_path / "own-ledger"
    own.mkdir()
    server_dir = tmp_path / "server-says"
    client = HospitalClient(NodeSettings(mode="deployment", hospital_name="north"), ledger_dir=str(own))
    config = {**study_payload(cfg, 1, str(server_dir)), SECURE_KEY: True}
    received = _zeros(cfg)
    arrays, weight, metrics = client.fit(received, config)
    assert metrics[DECLINED_KEY] == EXACT_REFUSED and weight == 0
    assert len(arrays) == 1 and arrays[0] is received[0]  # the "model" back untouched: nothing of its own
    assert os.listdir(own) == [] and not server_dir.exists()
    permissive = SitePolicy(require_secure_aggregation=False, min_hospitals=1)
    assert _ask(cfg, own, index=1, policy=permissive, simulated=False).declined == EXACT_REFUSED
    assert _ask(cfg, own, index=1, policy=None, simulated=False).declined == EXACT_REFUSED
    assert os.listdir(own) == []


def test_a_deployed_hospital_charges_a_noised_description_to_its_own_ledger_not_the_servers_folder(tmp_path,
                                                                                                  study):
    from fedhealth.hospital.app import HospitalClient
    from fedhealth.hospital.node_config import NodeSettings

    cfg = study(epsilon=1.0)
    own, server_dir = tmp_path / "own-ledger", tmp_path / "server-says"
    client = HospitalClient(NodeSettings(mode="deployment", hospital_name="north"), ledger_dir=str(own))
    arrays, weight, metrics = client.fit(_zeros(cfg), {**study_payload(cfg, 1, str(server_dir)), SECURE_KEY: True})
    assert DECLINED_KEY not in metrics and weight == 1
    assert arrays[0].shape == (description_terms(cfg).length,)
    assert len(_entries(own, "north")) == 1 and not server_dir.exists()
    assert metrics["epsilon"] == pytest.approx(_entries(own, "north")[0]["epsilon"])
    # besides its index and this study's epsilon, only `local.*` figures, which its audit mod keeps and removes
    # before the reply leaves (what reaches the server: tests/integration/test_describe_federation.py)
    # (and which group slots it filled: a function of the study and its own policy, never of its records)
    assert all(k.startswith("local.") for k in set(metrics) - {"hospital_index", "epsilon", "groups_filled"}), metrics
    assert metrics["groups_filled"] == "[]"  # a deployed hospital's default policy fills no group slot


def test_a_hospital_whose_policy_caps_epsilon_declines_an_exact_description(tmp_path, study, nothing_computed):
    cfg = study()
    capped = SitePolicy(max_epsilon=5.0, require_secure_aggregation=False)
    assert _ask(cfg, tmp_path, policy=capped, simulated=True).declined == EXACT_CAPPED
    assert _ask(cfg, tmp_path, policy=SitePolicy(max_epsilon=5.0), simulated=True).declined == EXACT_CAPPED
    assert os.listdir(tmp_path) == ["study.toml"]


def test_a_server_cannot_weaken_the_noise_with_a_large_delta(tmp_path, nothing_computed):
    """A large `privacy.delta` would calibrate less noise for the same epsilon: the hospital's delta limit
    (its policy's max_delta, else 1 / (10 x its declared records)) holds for a description as for training."""
    path = tmp_path / "study.toml"
    path.write_text(SMALL)
    weak = description_study(path, epsilon=1.0, overrides=["privacy.delta=0.05"])
    for policy in (SitePolicy(), SitePolicy(max_delta=1e-5)):
        described = _ask(weak, tmp_path / "ledger", index=1, policy=policy, simulated=False)
        assert described.declined.startswith(DELTA_TOO_LARGE) and described.vector is None
    assert not (tmp_path / "ledger").exists()  # nothing charged, not even a ledger created


def test_a_policy_minimum_above_the_studys_hospitals_declines(tmp_path, study, nothing_computed):
    described = _ask(study(epsilon=1.0), tmp_path / "ledger", policy=SitePolicy(min_hospitals=5), simulated=False)
    assert described.declined.startswith(TOO_FEW_HOSPITALS)
    assert not (tmp_path / "ledger").exists()


def test_a_plain_request_is_declined_unless_the_policy_allows_plain_aggregation(tmp_path, study, monkeypatch):
    cfg = study()
    with monkeypatch.context() as mp:  # the refusals read nothing
        import fedhealth.data.cohort_records as records_module

        mp.setattr(records_module, "cohort_records", lambda *a, **k: pytest.fail("records read before declining"))
        assert _ask(cfg, secure=False, policy=None).declined == PLAIN_REFUSED  # no policy: the safe default
        assert _ask(cfg, secure=False, policy=SitePolicy()).declined == PLAIN_REFUSED
        missing = describe_cohort(cfg, 0, _zeros(cfg), {ROUND_KEY: 1}, policy=SitePolicy(), simulated=True,
                                  ledger_dir="", data_file=None)
        assert missing.declined == PLAIN_REFUSED  # no mark from its own SecAgg+ mod: not secure
    allowed = _ask(cfg, secure=False, policy=SitePolicy(require_secure_aggregation=False))
    assert not allowed.declined and allowed.vector is not None
    terms, released, exact = description_terms(cfg), _decoded(cfg, allowed.vector), _exact(cfg)
    counts = ~sum_cells(terms.layout)  # counts exact; sums of u in fixed point, within 0.5 / scale
    np.testing.assert_array_equal(released[counts], exact[counts])
    assert np.all(np.abs(released[~counts] - exact[~counts]) <= 0.5 / terms.scale)


@pytest.mark.parametrize("bad", ["one cell not zero", "one cell short", "one cell long", "two arrays", "no array",
                                 "a NaN", "a row, not a vector", "another layout"])
def test_a_received_vector_that_is_not_the_layouts_zeros_is_declined_with_nothing_charged(tmp_path, study, bad):
    cfg = study(epsilon=1.0)
    n = description_terms(cfg).length
    if bad == "another layout":
        other = len(description_terms(study(epsilon=1.0, bins=10)).layout.cells)
        assert other != n
        received = [np.zeros(other)]
        description_terms(cfg)  # back to this study's terms (the cache holds one)
    else:
        one = np.zeros(n)
        one[5] = 1.0
        nan = np.zeros(n)
        nan[0] = np.nan
        received = {"one cell not zero": [one], "one cell short": [np.zeros(n - 1)],
                    "one cell long": [np.zeros(n + 1)], "two arrays": [np.zeros(n), np.zeros(n)], "no array": [],
                    "a NaN": [nan], "a row, not a vector": [np.zeros((1, n))]}[bad]
    ledgers = tmp_path / "ledgers"
    import fedhealth.data.cohort_records as records_module

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(records_module, "cohort_records", lambda *a, **k: pytest.fail("records read before declining"))
        described = _ask(cfg, ledgers, received=received)
    assert described.declined.startswith(LAYOUT_MISMATCH) and described.vector is None
    assert not ledgers.exists()  # nothing charged, no secret created, no release stored


# ---- spending: once per release, retries free, nothing past the cap ----

def test_a_noised_release_is_charged_once_resent_free_and_a_new_release_is_charged_until_the_cap(tmp_path, study):
    first = study(epsilon=1.0)
    terms = description_terms(first)
    z = terms.noise_multiplier
    one, two = epsilon_of([(z, 1.0, 1)], terms.delta), epsilon_of([(z, 1.0, 1)] * 2, terms.delta)
    cap = SitePolicy(max_epsilon=(two + 1.9) / 2)  # room for two releases at epsilon 1, not for an epsilon-2 one
    ledgers = tmp_path / "ledgers"
    ledger = ledgers / "south.json"

    a = _ask(first, ledgers, policy=cap)
    assert not a.declined and a.vector is not None
    [entry] = _entries(ledgers)
    assert entry["noise_multiplier"] == z and entry["sample_rate"] == 1.0 and entry["steps"] == 1
    assert entry["epsilon"] == pytest.approx(one) and 0.95 <= entry["epsilon"] <= 1.0 + 1e-9
    assert entry["max_grad_norm"] == pytest.approx(terms.sensitivity) and entry["release"]
    assert a.shared == {"epsilon": pytest.approx(one), "groups_filled": "[]"} and "records" not in a.shared
    assert a.local["epsilon_this_release"] == pytest.approx(one)
    charged = ledger.read_bytes()

    retry = _ask(first, ledgers, policy=cap)  # the same release again (a lost reply, a replayed request)
    assert not retry.declined and retry.vector.tobytes() == a.vector.tobytes()
    assert retry.local.get("retry") == 1.0 and retry.shared == a.shared
    assert ledger.read_bytes() == charged

    other = study(epsilon=1.0, bins=10)  # other settings: a new release, charged again
    b = _ask(other, ledgers, policy=cap)
    assert not b.declined and b.vector is not None and len(b.vector) != len(a.vector)
    entries = _entries(ledgers)
    assert len(entries) == 2 and entries[1]["release"] != entries[0]["release"]
    assert entries[1]["epsilon"] == pytest.approx(two)
    assert b.shared["epsilon"] == pytest.approx(one)  # the server sees this study's spending, not the total
    assert b.local["epsilon_total"] == pytest.approx(two)
    at_cap = ledger.read_bytes()
    releases = sorted(p.name for p in (ledgers / "south.releases").iterdir())
    assert len(releases) == 2

    for refused in (study(epsilon=2.0), study(epsilon=1.0, bins=5)):  # either would pass the cap
        described = _ask(refused, ledgers, policy=cap)
        assert described.declined == BUDGET_REASON and described.vector is None
        assert ledger.read_bytes() == at_cap
    assert _ask(study(epsilon=1.0, bins=10), ledgers, policy=cap, server_round=2).declined == BUDGET_REASON
    assert ledger.read_bytes() == at_cap
    assert sorted(p.name for p in (ledgers / "south.releases").iterdir()) == releases

    again = _ask(study(epsilon=1.0), ledgers, policy=cap)  # at the cap a retry is still resent, free
    assert not again.declined and again.vector.tobytes() == a.vector.tobytes()
    assert ledger.read_bytes() == at_cap


def test_the_noise_comes_from_the_hospitals_own_secret_not_from_the_study(tmp_path, study, monkeypatch):
    """The same hospital in two fresh ledger folders (two secrets) noises the same request differently; two
    hospitals given the same records noise them differently; the noise has the stated sd and is not what
    the study's public seed would draw."""
    cfg = study(epsilon=1.0)
    terms = description_terms(cfg)
    exact = _exact(cfg)
    counts = ~sum_cells(terms.layout)

    first, second = _ask(cfg, tmp_path / "one"), _ask(cfg, tmp_path / "two")
    assert (tmp_path / "one" / "south.secret").read_bytes() != (tmp_path / "two" / "south.secret").read_bytes()
    noise = [_decoded(cfg, d.vector) - exact for d in (first, second)]
    assert np.mean(noise[0][counts] != noise[1][counts]) > 0.9
    for n in noise:
        assert np.mean(n[counts] != 0) > 0.9
        assert 0.75 * terms.noise_sd < n[counts].std() < 1.25 * terms.noise_sd
    public = np.random.default_rng(cfg.seed).normal(0.0, terms.noise_sd, size=terms.length)
    assert abs(np.corrcoef(noise[0], public)[0, 1]) < 0.3

    # two hospitals, the same records (hospital 0's for both): their noise still differs
    import fedhealth.data.cohort_records as records_module

    real = records_module.cohort_records
    monkeypatch.setattr(records_module, "cohort_records", lambda c, i, f=None: real(c, 0, f))
    shared = tmp_path / "shared"
    south, north = _ask(cfg, shared, index=0), _ask(cfg, shared, index=1)
    assert (shared / "south.secret").read_bytes() != (shared / "north.secret").read_bytes()
    assert south.local["records"] == north.local["records"] == 150
    assert np.mean(south.vector[counts] != north.vector[counts]) > 0.9


def test_a_site_table_leaves_only_when_the_hospitals_own_policy_says_so(tmp_path, study):
    """The hospital's own Table 1 column rides in the clear part of its reply only under `share_site_statistics`;
    it is computed by the hospital, with counts below its policy's `min_cell` withheld by the hospital."""
    import json

    from fedhealth.hospital.describe import SITE_TABLE_KEY

    cfg = study(epsilon=1.0)
    quiet = _ask(cfg, tmp_path / "a", policy=SitePolicy(min_hospitals=3), simulated=False)
    assert quiet.declined == "" and SITE_TABLE_KEY not in quiet.shared
    sharing = _ask(cfg, tmp_path / "b", policy=SitePolicy(share_site_statistics=True, min_cell=20), simulated=False)
    rows = json.loads(sharing.shared[SITE_TABLE_KEY])
    assert rows[0]["variable"] == "n" and abs(rows[0]["value"] - 150) < 5 * description_terms(cfg).noise_sd
    assert all((r["value"] is None) == (r["suppressed"] is not None) for r in rows)
    assert len(_entries(tmp_path / "b")) == 1  # the column is the noised release itself: one charge
    exact = _ask(study(), tmp_path / "c", policy=SitePolicy(share_site_statistics=True, min_cell=0), simulated=True)
    n = json.loads(exact.shared[SITE_TABLE_KEY])[0]
    assert n == {"variable": "n", "statistic": "count", "value": 150.0, "error": 0.0, "unit": "1", "suppressed": None}


def test_a_time_to_event_site_column_carries_its_curve_cut_where_few_remain_at_risk(tmp_path):
    import json

    from fedhealth.hospital.describe import SITE_CURVE_KEY

    path = tmp_path / "study.toml"
    path.write_text(SMALL.replace('seed = 5\n', 'seed = 5\noutcome = "time_to_event"\n', 1))
    cfg = description_study(path)
    everything = _ask(cfg, tmp_path / "m", policy=SitePolicy(share_site_statistics=True, min_cell=0), simulated=True)
    full = json.loads(everything.shared[SITE_CURVE_KEY])
    edges = description_terms(cfg).layout.block("outcome").edges
    assert [p["time"] for p in full] == list(edges[1:])  # every interval end
    below = int(full[3]["at_risk"]) + 1  # the fourth interval starts with fewer at risk than this
    described = _ask(cfg, tmp_path / "l", policy=SitePolicy(share_site_statistics=True, min_cell=below),
                     simulated=True)
    points = json.loads(described.shared[SITE_CURVE_KEY])
    assert points == full[:len(points)] and 0 < len(points) <= 3  # cut before the first interval below min_cell
    assert all(p["at_risk"] >= below for p in points)


# ---- the attacker review's findings (each failed before its fix) ----

def test_describing_a_study_does_not_stop_the_hospital_training_it(tmp_path):
    """A description is charged under `<name>#describe:<fingerprint>`: the training study of the same name
    (whose privacy terms are fixed by name) is neither fixed nor broken by it (before: every training round
    was refused, "the terms file is missing while the ledger holds 1 charge")."""
    from fedhealth.api import load_study
    from fedhealth.privacy.terms import FixedTerms, check_terms
    from fedhealth.study.policy import effective_cap

    path = tmp_path / "study.toml"
    path.write_text(SMALL.replace('seed = 5\n', 'seed = 5\n[privacy]\nmode = "record"\nnoise_multiplier = 1.1\n', 1))
    train, describe = load_study(path), description_study(path, epsilon=1.0)
    ledger = tmp_path / "ledger"
    cap = effective_cap(SitePolicy(), train.privacy.max_epsilon)
    assert not _ask(describe, ledger, index=1, policy=SitePolicy(), simulated=False).declined
    entry = _entries(ledger, "north")[0]
    assert entry["study"].startswith("describe-small#describe:")
    assert isinstance(check_terms(ledger, "north", train, 1, 1, cap), FixedTerms | type(None))


def test_group_slots_need_the_hospitals_own_policy_and_its_minimum(tmp_path):
    """A tier or region slot is a per-site release against a server that lists members who are not there, so
    a hospital with a policy fills one only under `share_group_statistics`, and only when the study lists at
    least its minimum aggregate of that group; the server's table withholds a group fewer than 3 filled."""
    from fedhealth.hospital.describe import group_slots

    path = tmp_path / "study.toml"
    tiers = SMALL.replace('tier = "tertiary"', 'tier = "secondary"').replace('tier = "community"', 'tier = "secondary"')
    path.write_text(tiers)
    cfg = description_study(path, epsilon=1.0)
    terms = description_terms(cfg)
    assert terms.groups == (("tier", "secondary"),)
    assert group_slots(cfg, 0, terms, None) == [0, 1]  # simulated, no policy: the study's hospitals are its own
    assert group_slots(cfg, 0, terms, SitePolicy()) == [0]  # a policy must say so
    assert group_slots(cfg, 0, terms, SitePolicy(share_group_statistics=True)) == [0, 1]
    assert group_slots(cfg, 0, terms, SitePolicy(share_group_statistics=True, min_hospitals=4)) == [0]
    described = _ask(cfg, tmp_path / "l", policy=SitePolicy(), simulated=False)
    group = description_terms(cfg).slot(described.vector, 1)
    assert np.count_nonzero(group) > 0  # noise only: the slot is noised like every other, but holds no records
    assert described.shared["groups_filled"] == "[]"


def test_a_deployed_hospital_without_its_own_schema_reads_nothing(tmp_path, monkeypatch):
    """Without its own schema-file, the server's schema would decide which checks run on a deployed hospital's
    records, and an error reply (the file fails them) against a decline would tell the server one fact about the
    records per request, uncharged (before: the median age recovered exactly by bisection on `age.max`)."""
    import fedhealth.data.cohort_records as records_module
    from fedhealth.hospital.app import HospitalClient
    from fedhealth.hospital.guard import HospitalRefusal
    from fedhealth.hospital.node_config import NodeSettings
    from tests.support import ROOT

    monkeypatch.setattr(records_module, "cohort_records", lambda *a, **k: pytest.fail("records read"))
    cfg = description_study(ROOT / "configs" / "heart-disease.toml", epsilon=1.0)
    node = NodeSettings(mode="deployment", hospital_name="cleveland",
                        data_file=str(ROOT / "configs" / "data" / "heart-disease" / "cleveland.csv"))
    client = HospitalClient(node, ledger_dir=str(tmp_path / "ledger"), data_file=node.data_file)
    with pytest.raises(HospitalRefusal, match="no schema-file"):
        client.fit([np.zeros(description_terms(cfg).length)], study_payload(cfg, 1))
    assert not (tmp_path / "ledger").exists()
