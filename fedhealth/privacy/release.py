"""What one release is, and the hospital's copy of each update it released.

A release is keyed by (study, round, SHA-256 of the global model received, training settings). Why all
four: a retry after a crash (same study, same round, same model, same settings) must not cost budget
twice, but anything a server could vary — other weights for the same round, another round, other
settings — is a different computation on the same records, so a different release that must be charged.

Why store the update: a retry re-sends the byte-identical update the hospital stored when it was first
released, at no new cost. Training again would draw new noise (a second, uncharged release); recomputing
the old one would need the same noise, which only the hospital can reproduce and which need not be
trusted to reproduce bit for bit. The store sits beside the ledger (mode 0600), written durably before
the update leaves.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from fedhealth.durable import atomic_write_bytes, inside


def model_hash(arrays: list[np.ndarray]) -> str:
    """SHA-256 over a model's arrays (dtype, shape and bytes of each, in order)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def release_key(study: str, server_round: int, received_model: str, settings: dict) -> str:
    """The key of a release: SHA-256 of (study, round, hash of the model received, training settings)."""
    body = json.dumps({"study": study, "round": int(server_round), "model": received_model, "settings": settings},
                      sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


class ReleaseStore:
    """The updates a hospital released, one `.npz` per release key, under `<ledger dir>/<hospital>.releases/`."""

    def __init__(self, ledger_dir: Path, hospital: str) -> None:
        self.root = inside(ledger_dir, f"{hospital}.releases")

    def _path(self, key: str) -> Path:
        if not (len(key) == 64 and all(c in "0123456789abcdef" for c in key)):
            raise ValueError("a release key is a SHA-256 hex digest")
        return self.root / f"{key}.npz"

    def put(self, key: str, arrays: list[np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, *arrays)
        atomic_write_bytes(self._path(key), buffer.getvalue())

    def get(self, key: str) -> list[np.ndarray] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]
