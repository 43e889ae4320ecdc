"""Seeds derived from the study seed and a purpose, so no random state carries between rounds.

Every random choice (initial weights, shuffling per hospital per round) is a pure function of
(study seed, purpose, hospital, round): results do not depend on the order Ray schedules clients
in, and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *parts: object) -> int:
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
