"""The randomness of every DP release at a site: secret, fresh, from a CSPRNG.

A release's guarantee holds only if the party that sees it cannot predict its
noise. Every random draw a site makes for a release (Gaussian noise, Poisson
sampling of frames or episodes, frames drawn from an episode) therefore comes
from a :class:`NoiseSource`: a ChaCha20 keystream (RFC 8439, via
``cryptography``) under a 256-bit key that the site draws from the operating
system (``os.urandom``) for that release alone. Nothing in a message seeds it,
and no two releases share a key, so two identical queries get independent noise.

Gaussian noise of a value that leaves as it is (the statistics, the losses) is
drawn as Opacus's ``secure_mode`` draws it (Holohan and Braghin 2021, "Secure
random sampling in differential privacy", n = 2): the sum of four Box-Muller
normals divided by two, which hides the low bits that a single floating-point
Gaussian gives away (Jin et al. 2022, "Are we there yet? Timing and
floating-point attacks on differential privacy systems"). DP-SGD's gradient
noise takes one normal per value (:meth:`NoiseSource.normal`, ``draws``).
Opacus's own ``secure_mode`` needs torchcsprng, which has no build for current torch.

Reproducible tests and benchmarks set ``DATASPACE_NOISE_SEED`` in the site
process's environment (no message reaches it): each release's key is then
``HMAC-SHA256(seed, label)`` with the release's own label, so runs repeat bit for
bit, and every ``round.started`` says ``noise: "seeded"`` instead of ``"csprng"``
so an auditor sees a site that ran that way. Code that is not a site (a
benchmark's baseline) takes :meth:`NoiseSource.seeded`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

#: the environment variable of a site process that makes its noise reproducible (tests)
SEED_ENV = "DATASPACE_NOISE_SEED"
#: numpy's dtype of each torch dtype a noise tensor may have
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}
#: normals drawn per chunk (64 KiB of floats per array: the math stays in cache)
_CHUNK = 1 << 13


def noise_kind() -> str:
    """What the site's releases are drawn from: ``"csprng"``, or ``"seeded"`` (tests)."""
    return "seeded" if os.environ.get(SEED_ENV) else "csprng"


class NoiseSource:
    """A ChaCha20 keystream turned into uniforms, normals, Poisson masks and permutations."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a noise key is 32 bytes")
        # the 16-byte nonce is ChaCha20's counter and nonce: a fresh key per source
        self._stream = Cipher(algorithms.ChaCha20(key, b"\0" * 16), mode=None).encryptor()

    @classmethod
    def fresh(cls, label: str) -> NoiseSource:
        """The source of one release: a key from the OS, or from the test seed and ``label``."""
        seed = os.environ.get(SEED_ENV)
        if seed:
            return cls.seeded(f"{seed}/{label}")
        return cls(os.urandom(32))

    @classmethod
    def seeded(cls, seed: str | int | bytes) -> NoiseSource:
        """A reproducible source (tests, benchmarks, never a site's release)."""
        raw = seed if isinstance(seed, bytes) else str(seed).encode()
        return cls(hmac.new(b"dataspace/noise/v1", raw, hashlib.sha256).digest())

    def _bytes(self, n: int) -> bytes:
        return self._stream.update(bytes(n))

    def _uniform64(self, n: int) -> np.ndarray:
        """``n`` float64 uniforms in (0, 1), 53 random bits each."""
        words = np.frombuffer(self._bytes(8 * n), dtype="<u8") >> np.uint64(11)
        return (words.astype(np.float64) + 0.5) * 2.0**-53

    def uniform(self, n: int) -> torch.Tensor:
        """``n`` float64 uniforms in (0, 1), 53 random bits each."""
        return torch.from_numpy(self._uniform64(n))

    def _box_muller(self, n: int, angle: type = np.float64) -> np.ndarray:
        """``n`` standard normals (numpy's math: several times torch's here).

        The radius always comes from 53-bit uniforms in float64, so the tails reach
        8.5 sigma; ``angle`` float32 computes the cosine and sine in single precision
        (twice as fast here), for values that are float32 anyway.
        """
        out = np.empty(n)
        for at in range(0, n, _CHUNK):  # chunks that stay in cache
            k = min(_CHUNK, n - at)
            m = (k + 1) // 2
            u = self._uniform64(2 * m)
            r = np.sqrt(-2.0 * np.log(u[:m]))
            theta = ((2 * math.pi) * u[m:]).astype(angle)
            pair = np.concatenate([r * np.cos(theta), r * np.sin(theta)])
            out[at : at + k] = pair[:k]
        return out

    def normal(
        self, shape: tuple[int, ...] | torch.Size, dtype=torch.float32, draws: int = 4
    ) -> torch.Tensor:
        """Standard normals of ``shape`` as ``dtype``.

        ``draws = 4`` (the default): four Box-Muller normals summed and halved,
        Holohan and Braghin's secure sampling (module docstring), for every
        release whose noisy value leaves as it is (statistics, losses).
        ``draws = 1``: one normal, for DP-SGD's gradient noise, which never leaves
        by itself: an update is float32 weights after a round of SGD steps, so
        no noisy sum is ever observed exactly, which the low-bit attacks need;
        four draws there would cost most of a step (bench/RESULTS.md, dp_overhead).
        """
        n = math.prod(shape)
        if draws == 1:
            z = self._box_muller(n, angle=np.float32 if dtype == torch.float32 else np.float64)
        else:
            z = self._box_muller(draws * n).reshape(draws, n).sum(0) / math.sqrt(draws)
        return torch.from_numpy(z.astype(_NUMPY[dtype], copy=False).reshape(tuple(shape)))

    def bernoulli(self, n: int, q: float) -> torch.Tensor:
        """A Poisson sample: each of ``n`` units in independently with probability ``q``."""
        return self.uniform(n) < q

    def randperm(self, n: int) -> torch.Tensor:
        """A uniformly random permutation of ``range(n)``."""
        return torch.argsort(self.uniform(n))
