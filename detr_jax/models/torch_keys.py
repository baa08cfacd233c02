"""Shared pieces of the PyTorch key maps that live beside each part (pure numpy, no torch).

A state_dict here is `dict[str, np.ndarray]` in PyTorch layout (convolution weights OIHW, linear
weights [out, in]); converted params are flat `dict[str, np.ndarray]` keyed by "/"-joined param
paths (HWIO kernels, [in, out] dense kernels).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class ConversionError(ValueError):
    """A state_dict that does not convert: missing, unexpected or mis-shaped keys are listed."""


class KeyReader:
    """Reads keys from a state_dict, remembering which ones were used and which were missing."""

    def __init__(self, state_dict: dict[str, np.ndarray]):
        self.sd = state_dict
        self.used: set[str] = set()
        self.missing: list[str] = []

    def get(self, key: str) -> np.ndarray | None:
        if key not in self.sd:
            self.missing.append(key)
            return None
        self.used.add(key)
        return np.asarray(self.sd[key])

    def unexpected(self, ignore: Callable[[str], bool] = lambda k: False) -> list[str]:
        return sorted(k for k in self.sd if k not in self.used and not ignore(k))

    def raise_if_bad(self, what: str, ignore: Callable[[str], bool] = lambda k: False) -> None:
        unexpected = self.unexpected(ignore)
        if self.missing or unexpected:
            raise ConversionError(
                f"{what}: {len(self.missing)} missing and {len(unexpected)} unexpected keys\n"
                f"missing: {self.missing}\nunexpected: {unexpected}"
            )


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch conv weight OIHW -> flax HWIO."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def dense_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch linear weight [out, in] -> flax kernel [in, out]."""
    return np.ascontiguousarray(w.T)
