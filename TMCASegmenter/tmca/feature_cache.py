"""Encoder features kept between reports: a warm engine segments a second report without re-encoding.

:class:`CachedEncoderRunner` wraps a backend runner (``encode``/``decode``, see :mod:`tmca.backends`).
Its ``encode`` keeps each batch's features by the content of the input batch (a BLAKE2 digest of its
bytes, so the same slices of the same volume hit, whatever the report, and a changed volume misses),
least recently used out beyond ``max_bytes``. Hashing a 16-slice 224x224 batch takes milliseconds;
encoding it, hundreds.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch


def _nbytes(features: Any) -> int:
    return sum(int(f.nbytes) if isinstance(f, np.ndarray) else f.element_size() * f.nelement() for f in features)


def content_key(x: torch.Tensor) -> tuple:
    """Shape, dtype and BLAKE2 digest of a tensor's values."""
    array = x.detach().to("cpu").contiguous().numpy()
    return tuple(x.shape), str(x.dtype), hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest()


class CachedEncoderRunner:
    """A runner whose ``encode`` results are kept (up to ``max_bytes``); ``hits``/``misses`` count batches."""

    def __init__(self, runner: Any, max_bytes: int) -> None:
        self.runner = runner
        self.name = runner.name
        self.max_bytes = max_bytes
        self.hits = self.misses = 0
        self._entries: OrderedDict[tuple, Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # the warm engine clears the cache from its reading thread

    def encode(self, x: torch.Tensor) -> Any:
        key = content_key(x)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
            self.misses += 1
        features = self.runner.encode(x)
        size = _nbytes(features)
        with self._lock:
            if size <= self.max_bytes and key not in self._entries:
                while self._entries and self._bytes + size > self.max_bytes:
                    _, old = self._entries.popitem(last=False)
                    self._bytes -= _nbytes(old)
                self._entries[key] = features
                self._bytes += size
        return features

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        return self.runner.decode(*args, **kwargs)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
