"""A hospital that never connects does not hang the study: the wait is bounded, then the study goes on with
enough hospitals or stops with a clear reason."""

import threading
import time

import pytest
from flwr.server.client_proxy import ClientProxy

from fedhealth.coordinator.attendance import HospitalsMissing, StudyClientManager
from fedhealth.data.study_file import load_config
from fedhealth.study.config import ConfigError
from tests.support import SMOKE


class _Node(ClientProxy):
    def get_properties(self, ins, timeout, group_id):  # pragma: no cover - never called
        raise NotImplementedError

    def get_parameters(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError

    def fit(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):  # pragma: no cover
        raise NotImplementedError


def _manager(connected: int, expected: int = 3, least: int = 3, wait: float = 0.3) -> StudyClientManager:
    manager = StudyClientManager(expected, least, wait, report_every=0.1)
    for i in range(connected):
        manager.register(_Node(str(i)))
    return manager


def test_everyone_connected_is_sampled_at_once():
    started = time.monotonic()
    assert len(_manager(3, wait=30).sample(3, 3)) == 3
    assert time.monotonic() - started < 1


def test_a_missing_hospital_stops_the_study_after_the_wait_not_after_a_day(caplog):
    started = time.monotonic()
    with pytest.raises(HospitalsMissing, match="only 2 of 3 hospitals connected after 0.3 s; the study needs at "
                                               "least 3"):
        _manager(2).sample(3, 3)
    assert 0.25 < time.monotonic() - started < 5
    assert "waiting for hospitals: 2 of 3 connected" in caplog.text


def test_with_a_lower_minimum_the_round_goes_on_with_those_present():
    nodes = _manager(2, least=2).sample(3, 3)
    assert sorted(n.cid for n in nodes) == ["0", "1"]


def test_a_late_hospital_is_waited_for():
    manager = _manager(2, wait=10)
    threading.Timer(0.3, lambda: manager.register(_Node("late"))).start()
    started = time.monotonic()
    assert len(manager.sample(3, 3)) == 3
    assert time.monotonic() - started < 5


def test_min_hospitals_is_checked_against_the_study():
    with pytest.raises(ConfigError, match="the study has only 3 hospitals"):
        load_config(SMOKE, ["federation.min_hospitals=4"])
    with pytest.raises(ConfigError, match="secure aggregation needs at least 3 hospitals"):
        load_config(SMOKE, ["federation.min_hospitals=2"])
    assert load_config(SMOKE, ["federation.min_hospitals=2", "federation.secure_aggregation.enabled=false"])


def _deployed(names: dict[int, str], least: int = 3, wait: float = 0.3) -> StudyClientManager:
    """A deployment's manager: the SuperLink reports each node's registered name (`node_names`)."""
    manager = StudyClientManager(3, least, wait, report_every=0.1, hospitals=["cleveland", "hungary", "va"],
                                 node_names=lambda: dict(names))
    for node_id in names:
        assert manager.register(_Node(str(node_id)))  # Flower's node updater raises on False
    return manager


def test_a_node_that_is_not_one_of_the_studys_hospitals_is_never_sampled(caplog):
    names = {11: "cleveland", 12: "other-study", 13: "hungary", 14: "", 15: "va", 16: "hungary"}
    manager = _deployed(names)
    sampled = manager.sample(3, 3)
    assert sorted(manager.hospital_of[n.cid] for n in sampled) == ["cleveland", "hungary", "va"]
    assert sorted(n.cid for n in sampled) == ["11", "13", "15"]  # not 12, 14, nor a second "hungary"
    assert len(manager) == 3 and len(manager.all()) == 3
    assert "node 12 is registered as 'other-study', not one of this study's hospitals" in caplog.text
    assert "node 14 is registered without a hospital name" in caplog.text
    assert "node 16 is registered as 'hungary', which another connected node already is" in caplog.text


def test_outsiders_do_not_count_towards_the_hospitals_a_round_waits_for():
    manager = _deployed({1: "cleveland", 2: "hungary", 3: "someone-else"})
    with pytest.raises(HospitalsMissing, match=r"only 2 of 3 hospitals connected after 0.3 s \(1 other connected "
                                               r"node\(s\) are not this study's hospitals: registered as "
                                               r"'someone-else'"):
        manager.sample(3, 3)


def test_a_hospital_whose_node_left_can_come_back_as_another_node():
    names = {1: "cleveland", 2: "hungary", 3: "va"}
    manager = _deployed(names)
    manager.unregister(manager.clients["2"])
    names[4] = "hungary"
    assert manager.register(_Node("4"))
    assert sorted(n.cid for n in manager.sample(3, 3)) == ["1", "3", "4"]
