"""`fedhealth describe` (issue 19) in real federations: one SecAgg+ round on Flower's simulation engine in
which each hospital sends its own statistics vector, and the server unmasks only their sum.

Four federations, each of 3-4 small generated hospitals: the smoke study exact (its Grid instrumented), the
smoke hospitals as a time-to-event study exact, the smoke study at epsilon 1, and four hospitals of which one
caps epsilon below the request. The exact tables are checked against the pooled records (numpy, pandas,
scikit-survival); the noised ones against the hospitals' ledgers and stored releases. The hospital's own
checks, one request at a time: tests/unit/test_describe_hospital.py.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedhealth import api
from fedhealth.api import description_study
from fedhealth.data.cohort_records import cohort_records
from fedhealth.data.validation import ValidRecords
from fedhealth.experiments.describe import DESCRIPTION_JSON, TABLE_CSV, TABLE_HTML
from fedhealth.hospital.describe import describe_cohort
from fedhealth.privacy.ledger import read_ledger_file
from fedhealth.runs import rundir
from fedhealth.statistics import cohort_table, local_statistics
from fedhealth.statistics.layout import OUTCOME, histogram_edges
from fedhealth.statistics.study import description_terms
from fedhealth.statistics.table import histogram_quantile
from fedhealth.statistics.transport import decode, sum_cells
from fedhealth.study.secagg import MODULUS
from fedhealth.wire import LOCAL_PREFIX, ROUND_KEY, SECURE_KEY
from tests.support import SMOKE, check_kaplan_meier_against_scikit_survival

pytestmark = pytest.mark.slow

SMOKE_NAMES = ["city-tertiary", "county-secondary", "village-clinic"]
MEAN_RTOL = 1e-6  # a mean's error from the transport's fixed point is far below this (see _sd_bound for the sd)


# ---- the pooled computation the description must equal ----

def _pooled(cfg) -> ValidRecords:
    """Every hospital's records in one cohort, as if they sat in one place."""
    parts = [cohort_records(cfg, i).records for i in range(len(cfg.hospitals))]
    time = None if parts[0].time is None else np.concatenate([r.time for r in parts])
    return ValidRecords(np.concatenate([r.values for r in parts]), np.concatenate([r.label for r in parts]), None,
                        parts[0].report, time)


def _plain_vectors(cfg) -> list[np.ndarray]:
    """What each hospital would send in the clear for an exact description (its encoded vector): the very
    thing the server must never hold."""
    terms = description_terms(cfg)
    out = []
    for i in range(len(cfg.hospitals)):
        d = describe_cohort(cfg, i, [np.zeros(terms.length)], {SECURE_KEY: True, ROUND_KEY: 1}, policy=None,
                            simulated=True, ledger_dir="", data_file=None)
        assert not d.declined and d.vector is not None
        out.append(np.asarray(d.vector, dtype=np.float64))
    return out


def _sd_bound(m: int, scale: int, c: int, mean_u: float, sd_u: float, width: float) -> float:
    """The largest error the transport's fixed point can put on an sd (in the column's unit): each of m
    hospitals rounds its sum of u and of u squared to 1 / scale (error <= 0.5 / scale each,
    fedhealth.statistics.transport), so var_u = (q - s**2 / c) / (c - 1) moves by at most
    (e + 2 mean_u e + e**2 / c) / (c - 1) with e = m / (2 scale), and the sd by that over 2 sd_u."""
    e = m * 0.5 / scale
    dvar = (e + 2 * mean_u * e + e * e / c) / (c - 1)
    return width * dvar / (2 * sd_u) * 1.01 + 1e-12


def _check_exact_table(cfg, result) -> None:
    """n and every count cell of the released sum are the pooled records' exactly; means within 1e-6
    relative and sds within the fixed point's bound of numpy; binary and missing shares equal pandas;
    quartiles equal the pooled histogram's; nothing carries an error bound (exact)."""
    terms = description_terms(cfg)
    layout = terms.layout
    pooled = _pooled(cfg)
    table = result.table
    m = len(cfg.hospitals)

    # the summed vector, cell by cell: counts exact, fixed-point sums within m x 0.5 / scale
    direct = local_statistics(layout, pooled)
    sums = sum_cells(layout)
    overall = terms.slot(result.vector, 0)
    assert np.array_equal(overall[~sums], direct[~sums])
    assert np.all(np.abs(overall[sums] - direct[sums]) <= m * 0.5 / terms.scale + 1e-9)

    assert table.n == len(pooled.label) == sum(h.records for h in cfg.hospitals)
    assert table.figure("n", "count").value == len(pooled.label)
    assert result.noise_sd == 0.0 and all(f.error == 0.0 for f in table.figures)
    assert all(f.value is not None for f in table.figures), [f for f in table.figures if f.value is None]
    schema = cohort_records(cfg, 0).schema
    for i, spec in enumerate(schema.columns):
        x = pd.Series(pooled.values[:, i])
        assert table.figure(spec.name, "missing share").value == pytest.approx(x.isna().mean(), rel=1e-12,
                                                                               abs=1e-15)
        valid = x.dropna().to_numpy()
        if spec.kind == "binary":
            assert table.figure(spec.name, "share of 1").value == pytest.approx(pd.Series(valid).mean(), rel=1e-12)
        elif spec.kind == "categorical":
            shares = pd.Series(valid).value_counts(normalize=True)
            for k, name in enumerate(spec.categories or ()):
                assert table.figure(spec.name, f"share {name}").value == pytest.approx(shares.get(float(k), 0.0),
                                                                                       rel=1e-12)
        else:
            block = layout.block(spec.name)
            width = block.high - block.low
            assert table.figure(spec.name, "mean").value == pytest.approx(valid.mean(), rel=MEAN_RTOL)
            u = (valid - block.low) / width
            truth = valid.std(ddof=1)
            got = table.figure(spec.name, "sd").value
            bound = _sd_bound(m, terms.scale, len(valid), float(u.mean()), float(u.std(ddof=1)), width)
            assert abs(got - truth) <= max(MEAN_RTOL * truth, bound), (spec.name, got, truth, bound)
            hist, _ = np.histogram(valid, bins=layout.bins, range=(block.low, block.high))
            edges = histogram_edges(block, layout.bins)
            for statistic, p in (("median", 0.5), ("q1", 0.25), ("q3", 0.75)):
                assert table.figure(spec.name, statistic).value == histogram_quantile(hist, edges, p)
    if layout.outcome == "binary":
        assert table.figure(OUTCOME, "prevalence").value == pytest.approx(pd.Series(pooled.label).mean(), rel=1e-12)


def _check_outputs_say(run_dir: Path, word: str) -> None:
    for name in (TABLE_CSV, TABLE_HTML, DESCRIPTION_JSON):
        assert (run_dir / name).is_file(), name
    rows = list(csv.DictReader((run_dir / TABLE_CSV).open()))
    assert rows and all(word in r["privacy"] for r in rows)
    assert word in (run_dir / TABLE_HTML).read_text()
    assert word in json.loads((run_dir / DESCRIPTION_JSON).read_text())["privacy"]


def _entries(run_dir: Path, name: str) -> list[dict]:
    path = run_dir / rundir.PRIVACY_DIR / f"{name}.json"
    return read_ledger_file(path, name)["entries"] if path.exists() else []


def _stored_release(run_dir: Path, name: str) -> np.ndarray:
    """The one encoded vector a hospital stored for its release (what it sent inside the masked sum)."""
    files = sorted((run_dir / rundir.PRIVACY_DIR / f"{name}.releases").glob("*.npz"))
    assert len(files) == 1, files
    with np.load(files[0], allow_pickle=False) as data:
        return np.asarray(data["arr_0"], dtype=np.float64)


def _decoded_sum(terms, vectors: list[np.ndarray]) -> np.ndarray:
    summed = np.sum(vectors, axis=0)
    return np.concatenate([decode(terms.layout, terms.slot(summed, i), terms.scale) for i in range(terms.slots)])


# ---- the federations (each built once for the tests that read it) ----

@pytest.fixture(scope="module")
def exact_binary(tmp_path_factory):
    """The smoke study described exactly, with the server's Grid instrumented: every message the server sends
    and every reply it receives is recorded (as tests/integration/test_secagg_federation.py's tap does)."""
    import fedhealth.coordinator.app as server
    from fedhealth.coordinator.grid_tap import GridTap

    seen: dict[str, list] = {"plain": [], "masked": [], "metrics": [], "sent_models": []}

    def record(messages, replies):
        from flwr.common import bytes_to_ndarray
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

        for message in messages:
            for name, arrays in message.content.array_records.items():
                if "fitins" in name:
                    seen["sent_models"].append([a.numpy() for a in arrays.values()])
        for reply in replies:
            if reply.has_error():
                continue
            for name, arrays in reply.content.array_records.items():
                values = [a.numpy() for a in arrays.values()]
                if values:
                    seen["plain"].append((name, values))
            for name, config in reply.content.config_records.items():
                if "metrics" in name:
                    seen["metrics"].append(dict(config))
            cfgs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
            if cfgs is not None and Key.MASKED_PARAMETERS in cfgs:
                # the first array is the masked weight, the rest the masked vector
                seen["masked"].append([bytes_to_ndarray(b) for b in cfgs[Key.MASKED_PARAMETERS]][1:])

    run_dir = tmp_path_factory.mktemp("exact-binary") / "run"
    with pytest.MonkeyPatch.context() as mp:
        original = server.run_study
        mp.setattr(server, "run_study", lambda grid, *a, **k: original(GridTap(grid, record), *a, **k))
        result = api.describe(SMOKE, run_dir)
    return description_study(SMOKE), run_dir, result, seen


@pytest.fixture(scope="module")
def noised_binary(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("noised-binary") / "run"
    return description_study(SMOKE, epsilon=1.0), run_dir, api.describe(SMOKE, run_dir, epsilon=1.0)


def test_an_exact_description_equals_the_pooled_records_and_charges_nothing(exact_binary):
    cfg, run_dir, result, _ = exact_binary
    assert result.hospitals == SMOKE_NAMES and result.declined == [] and result.epsilon is None
    assert result.curve is None  # a binary study has no Kaplan-Meier curve
    _check_exact_table(cfg, result)
    # exact: no hospital was charged (no ledger, or one without entries), and every output says "exact"
    assert all(_entries(run_dir, name) == [] for name in SMOKE_NAMES)
    _check_outputs_say(run_dir, "exact")
    summary = json.loads((run_dir / DESCRIPTION_JSON).read_text())
    assert summary["hospitals"] == SMOKE_NAMES and summary["n"] == 2500 and summary["epsilon"] is None


def test_the_server_never_holds_one_hospitals_vector(exact_binary):
    """What the instrumented Grid saw: the "model" sent is zeros of the layout; no reply carries a plain
    array; each masked vector looks uniform over the modulus and is neither a hospital's vector nor its
    SecAgg+ quantisation, nor correlated with any; no metric carries a hospital's own figures; and what the
    server kept is exactly the sum of the three vectors."""
    cfg, run_dir, result, seen = exact_binary
    terms = description_terms(cfg)
    plain = _plain_vectors(cfg)
    assert len(plain) == 3 and all(np.abs(v).max() > 0 for v in plain)

    assert len(seen["sent_models"]) == 3
    for model in seen["sent_models"]:
        assert len(model) == 1 and model[0].shape == (terms.length,) and not np.any(model[0])
    assert seen["plain"] == []
    assert len(seen["masked"]) == 3
    c = int(terms.clipping_range)
    for arrays in seen["masked"]:
        masked = np.concatenate([a.ravel() for a in arrays]).astype(np.float64)
        assert masked.shape == (terms.length,)
        assert masked.std() > MODULUS / 10  # uniform-looking over the modulus, not a vector of counts
        for vector in plain:
            quantised = np.mod(vector + c, MODULUS)  # SecAgg+'s quantiser at c = Q / 2: x + c
            assert not np.array_equal(masked, vector) and not np.array_equal(masked, quantised)
            assert np.mean(masked == quantised) < 0.05
            assert abs(np.corrcoef(masked, vector)[0, 1]) < 0.25
    assert len(seen["metrics"]) == 3
    for metrics in seen["metrics"]:
        assert not [k for k in metrics if k.startswith(LOCAL_PREFIX)] and "n_train" not in metrics
        assert "records" not in metrics

    # what the server holds after unmasking: the mean of the encoded vectors, i.e. their sum over 3, nothing else
    weights, _ = rundir.load_weights(rundir.checkpoint_path(run_dir, 1))
    np.testing.assert_array_equal(np.rint(np.asarray(weights[0], dtype=np.float64) * 3), np.sum(plain, axis=0))
    np.testing.assert_array_equal(result.vector, _decoded_sum(terms, plain))


def test_an_exact_time_to_event_description_equals_the_pooled_records_and_scikit_survival(tmp_path):
    text = SMOKE.read_text().replace("seed = 7\n", 'seed = 7\noutcome = "time_to_event"\n', 1)
    assert 'outcome = "time_to_event"' in text
    path = tmp_path / "smoke-tte.toml"
    path.write_text(text)
    run_dir = tmp_path / "run"
    result = api.describe(path, run_dir)
    cfg = description_study(path)
    assert cfg.outcome_kind == "time_to_event"
    assert result.hospitals == SMOKE_NAMES and result.declined == []
    _check_exact_table(cfg, result)

    layout = description_terms(cfg).layout
    pooled = _pooled(cfg)
    edges = layout.block(OUTCOME).edges
    late = pooled.time > edges[-1]
    assert result.table.figure(OUTCOME, "event share").value == pytest.approx(
        (pooled.label.astype(bool) & ~late).mean(), rel=1e-12)
    assert result.curve is not None
    check_kaplan_meier_against_scikit_survival(result.curve, pooled.time, pooled.label, edges)
    assert all(_entries(run_dir, name) == [] for name in SMOKE_NAMES)
    _check_outputs_say(run_dir, "exact")
    assert (run_dir / "kaplan_meier.csv").is_file() and (run_dir / "kaplan_meier.png").stat().st_size > 0


def test_at_epsilon_one_each_hospital_is_charged_one_gaussian_step_and_the_figures_are_noised(noised_binary):
    cfg, run_dir, result = noised_binary
    terms = description_terms(cfg)
    assert terms.noise_multiplier is not None and terms.noise_sd > 0
    assert result.hospitals == SMOKE_NAMES and result.declined == [] and result.epsilon == 1.0
    assert result.noise_sd == pytest.approx(terms.noise_sd * math.sqrt(3))
    for name in SMOKE_NAMES:
        entries = _entries(run_dir, name)
        assert len(entries) == 1, (name, entries)
        e = entries[0]
        assert e["noise_multiplier"] == terms.noise_multiplier
        assert e["sample_rate"] == 1.0 and e["steps"] == 1
        assert 0.95 <= e["epsilon"] <= 1.0 + 1e-9
        assert e["max_grad_norm"] == pytest.approx(terms.sensitivity)
    # the released sum is exactly the sum of what the hospitals stored as sent (their noised vectors) ...
    stored = [_stored_release(run_dir, name) for name in SMOKE_NAMES]
    np.testing.assert_array_equal(result.vector, _decoded_sum(terms, stored))
    # ... which is not the exact sum: noise was added
    exact_vector = local_statistics(terms.layout, _pooled(cfg))
    counts = ~sum_cells(terms.layout)
    assert np.mean(result.vector[counts] != exact_vector[counts]) > 0.5
    noise = result.vector[counts] - exact_vector[counts]
    assert 0.6 * result.noise_sd < noise.std() < 1.4 * result.noise_sd  # ~ sqrt(3) x one hospital's sd

    exact = cohort_table(terms.layout, exact_vector, suppress_below=cfg.describe.min_cell)
    pairs = [(f, g) for f, g in zip(result.table.figures, exact.figures, strict=True)
             if f.value is not None and g.value is not None]
    assert [(f.variable, f.statistic) for f, _ in pairs] == [(g.variable, g.statistic) for _, g in pairs]
    assert sum(f.value != g.value for f, g in pairs) >= 0.8 * len(pairs)
    bounded = [(f, g) for f, g in pairs if f.error > 0 and math.isfinite(f.error)]
    assert len(bounded) >= 0.8 * len(pairs)
    within = sum(abs(f.value - g.value) <= f.error for f, g in bounded)
    assert within >= 0.8 * len(bounded), f"{within} of {len(bounded)} figures within their 95 % bound"
    _check_outputs_say(run_dir, "epsilon 1")
    rows = list(csv.DictReader((run_dir / TABLE_CSV).open()))
    assert all(r["privacy"].startswith("epsilon 1 per hospital") for r in rows)


def test_a_hospital_whose_policy_caps_epsilon_below_the_request_declines_and_the_rest_is_released(tmp_path):
    text = SMOKE.read_text() + ('\n[[hospitals]]\nname = "capped"\ntier = "secondary"\nregion = "east"\n'
                                'records = 1000\n[hospitals.policy]\nmax_epsilon = 0.5\n')
    path = tmp_path / "four.toml"
    path.write_text(text)
    run_dir = tmp_path / "run"
    result = api.describe(path, run_dir, epsilon=1.0)
    cfg = description_study(path, epsilon=1.0)
    assert [h.name for h in cfg.hospitals] == [*SMOKE_NAMES, "capped"]
    assert cfg.hospitals[3].policy is not None and cfg.hospitals[3].policy.max_epsilon == 0.5
    assert result.hospitals == SMOKE_NAMES
    assert len(result.declined) == 1, result.declined
    declined = result.declined[0]  # the public category only (fedhealth.wire), never the hospital's figures
    assert declined["hospital_index"] == 3 and declined["reason"] == "its privacy budget", declined
    assert _entries(run_dir, "capped") == []
    assert not list((run_dir / rundir.PRIVACY_DIR / "capped.releases").glob("*.npz"))
    for name in SMOKE_NAMES:
        assert len(_entries(run_dir, name)) == 1
    terms = description_terms(cfg)
    stored = [_stored_release(run_dir, name) for name in SMOKE_NAMES]
    np.testing.assert_array_equal(result.vector, _decoded_sum(terms, stored))  # the three others' sum, exactly
    assert abs(result.table.n - 2500) < 6 * result.noise_sd  # 2500 records, not 3500
    assert result.noise_sd == pytest.approx(terms.noise_sd * math.sqrt(3))
    rounds = rundir.read_jsonl(run_dir / rundir.ROUNDS_FILE)
    assert rounds[0]["hospitals_aggregated"] == [0, 1, 2]


def test_a_hospital_whose_policy_shares_its_site_statistics_releases_its_own_column(tmp_path):
    """`share_site_statistics` in the village clinic's own policy: beside the secure sum it releases its own
    Table 1 column, computed by itself from the very vector it noised for the sum (so the ledger holds one
    charge, as for every other hospital), its small counts withheld by itself at its policy's `min_cell`; the
    other two hospitals, whose policies do not say so, release no column of their own."""
    text = SMOKE.read_text() + "[hospitals.policy]\nshare_site_statistics = true\nmin_cell = 10\n" \
                               "require_secure_aggregation = true\n"
    path = tmp_path / "sharing.toml"
    path.write_text(text)
    cfg = description_study(path, epsilon=1.0)
    assert cfg.hospitals[2].name == "village-clinic" and cfg.hospitals[2].policy.share_site_statistics
    run_dir = tmp_path / "run"
    result = api.describe(path, run_dir, epsilon=1.0)
    sites = [g for g in result.groups if g.kind == "site"]
    assert [g.value for g in sites] == ["village-clinic"]
    site = sites[0].table
    terms = description_terms(cfg)
    assert abs(site.n - 300) <= 4 * terms.noise_sd  # one hospital's noise, not the sum's
    assert site.noise_sd == pytest.approx(terms.noise_sd)
    for f in site.figures:  # every figure a number with its bound, or withheld with the hospital's reason
        assert (f.value is None) == (f.suppressed is not None), f
    assert all(len(_entries(run_dir, name)) == 1 for name in SMOKE_NAMES)  # the column cost nothing more
    rows = list(csv.DictReader((run_dir / TABLE_CSV).open()))
    assert {r["group"] for r in rows} == {"all hospitals", "site village-clinic"}
    assert "site village-clinic" in (run_dir / TABLE_HTML).read_text()
    description = json.loads((run_dir / DESCRIPTION_JSON).read_text())
    assert [g["group"] for g in description["groups"]] == ["all hospitals", "site village-clinic"]
    exact = cohort_table(terms.layout, _stored_noised_slot(run_dir, "village-clinic", terms), noise_sd=terms.noise_sd,
                         suppress_below=10)
    assert [(f.value, f.suppressed) for f in exact.figures] == [(f.value, f.suppressed) for f in site.figures]


def _stored_noised_slot(run_dir: Path, name: str, terms) -> np.ndarray:
    """The noised vector the hospital stored with its release (its own slot of all hospitals)."""
    (path,) = (run_dir / rundir.PRIVACY_DIR / f"{name}.releases").glob("*.npz")
    with np.load(path) as stored:
        return terms.slot(stored[f"arr_{len(stored.files) - 1}"], 0)
