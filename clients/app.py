"""Flower ClientApp entry point (`[tool.flwr.app.components] clientapp`). All logic lives in fedhealth."""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from fedhealth.hospital.app import build_client_app  # noqa: E402

app = build_client_app()
