"""The round-0 global model: a pure function of the study (its model, its input width and its seed), so
the coordinator, the references and every check that needs "what the hospitals were first sent" agree."""

from __future__ import annotations

import numpy as np

from fedhealth.data.hospitals import input_width
from fedhealth.model.outcomes import build_study_model
from fedhealth.model.tabular import get_weights
from fedhealth.seeding import derive_seed
from fedhealth.study.config import StudyConfig


def initial_weights(cfg: StudyConfig) -> list[np.ndarray]:
    """The round-0 global model, a pure function of the study seed."""
    model = build_study_model(cfg, input_width(cfg), seed=derive_seed(cfg.seed, "init"))
    return get_weights(model)
