"""Gateway-side tally of accepted inputs, shipped to the controller's data monitor.

The gateway sees every row, so it counts there (missing values, values outside
the training range, unseen levels, level counts) and keeps a bounded reservoir of
numeric values for the drift tests, and of whole tensors (in arrival order, as one
float32 array per feature) for the tensor drift monitors. The tally rides on the
telemetry batch the gateway already sends once per sync period: no extra RPC, and
its size does not grow with traffic.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import numpy as np

from train_jobs.schema import ModelSchema

__all__ = ["InputTally"]


class _Reservoir:
    """Uniform sample of at most ``k`` values from a stream (Vitter's algorithm R)."""

    def __init__(self, k: int, rng: random.Random) -> None:
        self.k, self.seen, self.values, self._rng = k, 0, [], rng

    def add(self, v: float) -> None:
        self.seen += 1
        if len(self.values) < self.k:
            self.values.append(v)
        else:
            j = self._rng.randrange(self.seen)
            if j < self.k:
                self.values[j] = v


class InputTally:
    """Per-feature counts of the rows accepted since the last :meth:`drain`."""

    def __init__(self, schema: ModelSchema, *, sample_per_batch: int = 256, tensor_rows_per_batch: int = 64,
                 seed: int | None = None) -> None:
        self._schema = schema
        self._k = sample_per_batch
        self._k_tensor = tensor_rows_per_batch
        self._rng = random.Random(seed)
        self._reset()

    def _reset(self) -> None:
        self._rows = 0
        self._missing = [0] * len(self._schema.features)
        self._out = [0] * len(self._schema.features)
        self._counts = [[0] * (len(f.levels or ()) + 1) if f.categorical else None for f in self._schema.features]
        self._samples = [_Reservoir(self._k, self._rng) if f.numeric else None for f in self._schema.features]
        # (arrival index, tensor) pairs: a uniform sample when traffic outruns the cap, sent in arrival order
        self._tensors = [_Reservoir(self._k_tensor, self._rng) if f.tensor else None for f in self._schema.features]

    def add(self, rows: Sequence[Sequence[Any]]) -> None:
        """Count validated rows (schema order; ``None`` = an accepted missing value)."""
        feats = self._schema.features
        for row in rows:
            for j, (f, v) in enumerate(zip(feats, row)):
                if v is None:
                    self._missing[j] += 1
                elif f.tensor:  # the whole tensor, for the tensor drift monitor (no per-element tests)
                    t = self._tensors[j]
                    t.add((t.seen, v))
                elif f.numeric:
                    x = float(v)
                    if (f.min is not None and x < f.min) or (f.max is not None and x > f.max):
                        self._out[j] += 1
                    self._samples[j].add(x)
                else:
                    i = f.level_index(v)
                    counts = self._counts[j]
                    if i is None:
                        self._out[j] += 1
                        counts[-1] += 1
                    else:
                        counts[i] += 1
        self._rows += len(rows)

    def drain(self) -> dict[str, Any] | None:
        """The batch for the controller (None when no row came), and a fresh tally."""
        if not self._rows:
            return None
        features = {}
        for j, f in enumerate(self._schema.features):
            entry: dict[str, Any] = {"missing": self._missing[j]}
            if f.tensor:
                pass
            elif f.numeric:
                entry.update(out_of_range=self._out[j], values=self._samples[j].values,
                             sampled_from=self._samples[j].seen)
            else:
                entry.update(unseen=self._out[j], counts=self._counts[j])
            features[f.name] = entry
        out: dict[str, Any] = {"rows": self._rows, "features": features}
        tensors = {f.name: _stacked(t.values, f.shape) for f, t in zip(self._schema.features, self._tensors)
                   if t is not None and t.values}
        if tensors:
            out["tensors"] = tensors
        self._reset()
        return out


def _stacked(sample: list[tuple[int, Any]], shape: tuple[int, ...] | None) -> np.ndarray:
    """A tensor feature's sampled rows as one float32 array ``[n, *shape]`` in arrival order (one array
    pickles and ships far cheaper than nested lists)."""
    rows = [np.asarray(v, dtype=np.float32) for _, v in sorted(sample, key=lambda p: p[0])]
    return np.stack([r.reshape(shape) if shape else r for r in rows])
