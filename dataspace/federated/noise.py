"""The randomness of every DP release at a site: secret, fresh, from a CSPRNG.

A release's guarantee holds only if the party that sees it cannot predict its
noise. Every random draw a site makes for a release (Gaussian noise, Poisson
sampling of frames or episodes, frames drawn from an episode) therefore comes
from a :class:`NoiseSource`: a ChaCha20 keystream (RFC 8439, via
``cryptography``) under a 256-bit key that the site draws from the operating
system (``os.urandom``) for that release alone. Nothing in a message seeds it,
and no two releases share a key, so two identical queries get independent noise.

Gaussian noise is drawn as Opacus's ``secure_mode`` draws it (Holohan and
Braghin 2021, "Secure random sampling in differential privacy", n = 2): the sum
of four Box-Muller normals divided by two, which hides the low bits that a
single floating-point Gaussian gives away (Jin et al. 2022, "Are we there yet?
Timing and floating-point attacks on differential privacy systems"). Opacus's own
``secure_mode`` needs torchcsprng, which has no build for current torch.

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

    def uniform(self, n: int) -> torch.Tensor:
        """``n`` float64 uniforms in (0, 1), 53 random bits each."""
        words = np.frombuffer(self._bytes(8 * n), dtype="<u8") >> np.uint64(11)
        return torch.from_numpy((words.astype(np.float64) + 0.5) * 2.0**-53)

    def _box_muller(self, n: int) -> torch.Tensor:
        m = (n + 1) // 2
        u = self.uniform(2 * m)
        r = torch.sqrt(-2.0 * torch.log(u[:m]))
        theta = (2 * math.pi) * u[m:]
        return torch.cat([r * torch.cos(theta), r * torch.sin(theta)])[:n]

    def normal(self, shape: tuple[int, ...] | torch.Size, dtype=torch.float32) -> torch.Tensor:
        """Standard normals of ``shape``: (four Box-Muller draws summed) / 2, as ``dtype``."""
        n = math.prod(shape)
        z = self._box_muller(4 * n).view(4, n).sum(0) / 2.0
        return z.view(*shape).to(dtype)

    def bernoulli(self, n: int, q: float) -> torch.Tensor:
        """A Poisson sample: each of ``n`` units in independently with probability ``q``."""
        return self.uniform(n) < q

    def randperm(self, n: int) -> torch.Tensor:
        """A uniformly random permutation of ``range(n)``."""
        return torch.argsort(self.uniform(n))
