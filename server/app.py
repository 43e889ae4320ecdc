"""Flower ServerApp entry point (`[tool.flwr.app.components] serverapp`). All logic lives in fedhealth."""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from fedhealth.coordinator.app import build_server_app  # noqa: E402

app = build_server_app()
