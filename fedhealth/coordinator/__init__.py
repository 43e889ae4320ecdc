"""Flower wiring: ClientApp and ServerApp builders on Flower's workflow API (the one with SecAgg+)."""
