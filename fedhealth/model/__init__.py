"""Small tabular models, built by name. They know nothing of Flower or of privacy."""

from fedhealth.model.tabular import MODEL_NAMES, build_model, get_weights, set_weights

__all__ = ["MODEL_NAMES", "build_model", "get_weights", "set_weights"]
