"""Record-level differential privacy: Opacus DP-SGD, and each hospital's persistent budget ledger.

Unit of privacy: one patient record at one hospital. A hospital's epsilon (at its delta) covers
every round it has trained in for the study, composed by Opacus's RDP accountant from the ledger.
"""
