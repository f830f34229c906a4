"""Synthetic vectors that behave like CNN embeddings of chest X-rays, for the search benchmarks.

Random unit vectors in 2048-d are the worst case for a graph index: every pair is nearly
orthogonal, so the true neighbours are barely nearer than the rest. Real ResNet-50 features
of chest X-rays are the opposite: non-negative (averages of ReLU outputs), all within a
narrow cone (every image is a chest), of low intrinsic dimension, and clustered by patient,
view and finding. These vectors are built to share those traits, from each image's real
ChestX-ray14 metadata:

- a latent code of `LATENT` dimensions: the sum of a view position's code, one code per
  finding (No Finding has its own), the patient's code (follow-ups of one patient sit
  close), an age and a sex term, and the image's own variation;
- mapped to 2048-d by a fixed random linear map, added to a common mean direction (the
  cone), plus small isotropic noise, passed through a ReLU and scaled to unit length.

The weights were set so that the cosine of two unrelated images is ~0.6, and an image's
nearest neighbour (usually the same patient's) is at ~0.9: the range ImageNet ResNet-50
features of chest X-rays show. Queries are new images made the same way: follow-ups of
indexed patients, and patients not indexed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from medsearch_search.filters import Attributes

LATENT = 64
_VIEW, _FINDING, _PATIENT, _IMAGE, _AGE, _SEX = 1.0, 0.8, 1.1, 0.55, 0.3, 0.3
_MEAN, _NOISE = 1.6, 0.35


class EmbeddingModel:
    """A fixed, seeded stand-in for a model: the same metadata gives vectors from one distribution."""

    def __init__(self, dim: int, seed: int) -> None:
        self.dim = dim
        self._seed = seed
        rng = np.random.default_rng(seed)
        self._projection = (rng.standard_normal((LATENT, dim)) / np.sqrt(LATENT)).astype(np.float32)
        self._mean = np.abs(rng.standard_normal(dim)).astype(np.float32) * _MEAN
        self._codes: dict[str, NDArray[np.float32]] = {}
        self._code_rng = np.random.default_rng(seed + 1)
        self._age = self._code("age")
        self._sex = self._code("sex")

    def _code(self, key: str) -> NDArray[np.float32]:
        code = self._codes.get(key)
        if code is None:
            code = self._code_rng.standard_normal(LATENT).astype(np.float32)
            self._codes[key] = code
        return code

    def latent(self, attributes: Attributes, patient_key: str) -> NDArray[np.float32]:
        """An image's code without its own variation."""
        findings = attributes.findings or ("No Finding",)
        z = _VIEW * self._code(f"view:{attributes.view_position}")
        z = z + _FINDING * sum(self._code(f"finding:{f}") for f in findings) / np.sqrt(len(findings))
        z = z + _PATIENT * self._code(f"patient:{patient_key}")
        age = (attributes.age - 50) / 20 if attributes.age >= 0 else 0.0
        sex = {"M": 1.0, "F": -1.0}.get(attributes.sex or "", 0.0)
        code: NDArray[np.float32] = (z + _AGE * age * self._age + _SEX * sex * self._sex).astype(np.float32)
        return code

    def embed(
        self, attributes: Sequence[Attributes], patient_keys: Sequence[str], seed: int
    ) -> NDArray[np.float32]:
        """Unit vectors, one per image, in chunks to keep memory flat."""
        rng = np.random.default_rng((self._seed, seed))
        out = np.empty((len(attributes), self.dim), dtype=np.float32)
        for start in range(0, len(attributes), 8192):
            end = min(start + 8192, len(attributes))
            pairs = zip(attributes[start:end], patient_keys[start:end], strict=True)
            z = np.stack([self.latent(a, p) for a, p in pairs])
            z += _IMAGE * rng.standard_normal(z.shape, dtype=np.float32)
            x = z @ self._projection + self._mean
            x += _NOISE * rng.standard_normal(x.shape, dtype=np.float32)
            np.maximum(x, 0, out=x)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[start:end] = x
        return out
