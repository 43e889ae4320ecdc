"""fedhealth: federated learning for hospitals, with differential privacy and secure aggregation."""

__version__ = "0.1.0"
