"""The hospital's own secret: the only source of its DP-SGD noise and Poisson sampling.

Why: DP-SGD's guarantee assumes the noise is unknown to whoever sees the update. If the noise came from
anything the server sends (the study seed, the round number), a server that knows the config could
regenerate every noise vector and subtract it, leaving the clean sum of clipped gradients. So the noise
comes from 32 bytes of OS entropy (`secrets`) that the hospital generates itself, keeps beside its
ledger (file mode 0600) and never sends. Every random draw of a release is seeded by
HMAC-SHA256(secret, purpose, release key): nothing the server chooses determines it, two studies or two
runs never share it, and a retry of the same release draws the same values (the hospital re-sends its
stored update anyway, see `release`).

What it is not: PyTorch's generator (a Mersenne Twister) is not a cryptographic generator. Its 64-bit
seed is derived from the 256-bit secret through HMAC, so predicting the noise means guessing that seed;
the generator's outputs themselves never leave the hospital (only updates with gradients added do).
Opacus's `secure_mode` (torchcsprng) would remove even that caveat; it is not installable here.

In simulation each simulated hospital's secret lives in the run directory's privacy folder, next to its
ledger, so `--resume` redraws exactly what an uninterrupted run would; a new run directory gets new
secrets, so two runs of the same config never share noise.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from fedhealth.durable import inside
from fedhealth.errors import PrivacyRecordsError

SECRET_BYTES = 32


class SecretError(PrivacyRecordsError, RuntimeError):
    """The hospital's secret cannot be used (unreadable, wrong size, readable by others)."""


def secret_path(ledger_dir: Path, hospital: str) -> Path:
    return inside(ledger_dir, f"{hospital}.secret")


class HospitalSecret:
    """A hospital's 256-bit secret; `seed(...)` derives independent 64-bit seeds from it."""

    def __init__(self, key: bytes) -> None:
        if len(key) != SECRET_BYTES:
            raise SecretError(f"a hospital secret is {SECRET_BYTES} bytes, got {len(key)}")
        self._key = key

    def __repr__(self) -> str:  # never show the key
        return "HospitalSecret(<hidden>)"

    @classmethod
    def load_or_create(cls, path: Path) -> HospitalSecret:
        """The secret at `path`, created (mode 0600, from OS entropy) if there is none yet.

        Refuses a secret file that others can read or write: its noise would no longer be the hospital's alone.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            try:
                os.write(fd, secrets.token_bytes(SECRET_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
            from fedhealth.durable import fsync_dir

            fsync_dir(path.parent)
        try:
            mode = path.stat().st_mode
            key = path.read_bytes()
        except OSError as err:
            raise SecretError(f"{path}: the hospital's secret cannot be read ({err.strerror})") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(f"{path}: the hospital's secret is accessible to other users (mode "
                              f"{stat.S_IMODE(mode):04o}); run `chmod 600 {path}` and check who could have read it")
        if len(key) != SECRET_BYTES:
            raise SecretError(f"{path}: the hospital's secret has {len(key)} bytes, not {SECRET_BYTES}; it was "
                              "damaged. Restore it from backup; a new one would start a new noise stream")
        return cls(key)

    def seed(self, *parts: object) -> int:
        """A 64-bit seed for one purpose of one release, e.g. `seed("dp-sgd-noise", release_key)`."""
        message = "/".join(str(p) for p in parts).encode()
        return int.from_bytes(hmac.new(self._key, message, hashlib.sha256).digest()[:8], "little")
