"""Flower ServerApp entry point (`[tool.flwr.app.components] serverapp`). All logic lives in fedhealth.

The coordinator, plus the simulation's finishing step (references and summary, run when the run config
says `references=true`; a deployment submits `references=false`: the server holds no records)."""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from fedhealth.coordinator.app import build_server_app  # noqa: E402


def finish(study, run_dir, seconds):
    """Imported when used, so a deployed ServerApp never loads the simulation engine."""
    from fedhealth.experiments.simulate import finish as finish_with_references

    return finish_with_references(study, run_dir, seconds)


def finish_description(study, run_dir):
    """A cohort description's Table 1 from the unmasked sum (`fedhealth describe`; docs/cohort-statistics.md)."""
    from fedhealth.experiments.describe import finish_description as write_table

    return write_table(study, run_dir)


app = build_server_app(finish=finish, finish_description=finish_description)
