"""Experiments over simulated federations, on top of both sides: `simulate` (one study on Flower's
simulation engine), `sweep`, `contribution` (Shapley values), `references` (local-only and pooled models),
`summary`, and `privacy_audit` (membership-inference attacks on a finished run)."""
