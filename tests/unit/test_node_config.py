"""A hospital's node config: the declared keys only, typed, and an explicit mode (simulated nodes are the
ones Flower's simulation engine numbered; a deployed node that also claims a partition id is refused)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedhealth.hospital.node_config import DEPLOYMENT_KEYS, NodeConfigError, NodeSettings
from tests.support import ROOT


def test_a_deployed_hospitals_keys_are_read_with_their_types():
    s = NodeSettings.from_node_config({"hospital-name": "cleveland", "data-file": "/site/data.csv",
                                       "policy-file": "policy.toml", "ledger-dir": "ledger", "audit-log": ""})
    assert s.mode == "deployment" and not s.simulated
    assert s.hospital_name == "cleveland" and s.data_file == Path("/site/data.csv")
    assert s.policy_file == Path("policy.toml") and s.audit_log is None  # an empty value is unset


def test_flowers_simulation_keys_make_a_simulated_hospital():
    s = NodeSettings.from_node_config({"partition-id": 2, "num-partitions": 5})
    assert s.simulated and s.hospital_index == 2 and s.data_file is None


def test_an_unknown_key_is_named_with_the_keys_a_hospital_may_set():
    with pytest.raises(NodeConfigError, match=r"unknown key\(s\) 'ledger_dir'.*ledger-dir"):
        NodeSettings.from_node_config({"hospital-name": "a", "ledger_dir": "x"})


def test_a_deployed_hospital_claiming_a_partition_id_is_refused():
    with pytest.raises(NodeConfigError, match="partition-id .* next to data-file"):
        NodeSettings.from_node_config({"partition-id": 0, "data-file": "/site/data.csv"})


def test_a_badly_typed_value_names_the_key():
    with pytest.raises(NodeConfigError, match="hospital-index: expected int"):
        NodeSettings.from_node_config({"hospital-index": "first"})


def test_the_deploy_script_sets_only_declared_keys():
    text = (ROOT / "clients" / "deploy.sh").read_text()
    import re

    used = set(re.findall(r"([a-z-]+)='\$", text))
    assert used and used <= DEPLOYMENT_KEYS.keys(), used - DEPLOYMENT_KEYS.keys()
