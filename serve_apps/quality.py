"""Gateway-side tally of accepted inputs, shipped to the controller's data monitor.

The gateway sees every row, so it counts there (missing values, values outside
the training range, unseen levels, level counts) and keeps a bounded reservoir of
numeric values for the drift tests. The tally rides on the telemetry batch the
gateway already sends once per sync period: no extra RPC, and its size does not
grow with traffic.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

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

    def __init__(self, schema: ModelSchema, *, sample_per_batch: int = 256, seed: int | None = None) -> None:
        self._schema = schema
        self._k = sample_per_batch
        self._rng = random.Random(seed)
        self._reset()

    def _reset(self) -> None:
        self._rows = 0
        self._missing = [0] * len(self._schema.features)
        self._out = [0] * len(self._schema.features)
        self._counts = [[0] * (len(f.levels or ()) + 1) if f.categorical else None for f in self._schema.features]
        self._samples = [_Reservoir(self._k, self._rng) if f.numeric else None for f in self._schema.features]

    def add(self, rows: Sequence[Sequence[Any]]) -> None:
        """Count validated rows (schema order; ``None`` = an accepted missing value)."""
        feats = self._schema.features
        for row in rows:
            for j, (f, v) in enumerate(zip(feats, row)):
                if v is None:
                    self._missing[j] += 1
                elif f.tensor:  # missing rate only here; tensor drift needs the whole tensor, not a scalar
                    continue
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
        out = {"rows": self._rows, "features": features}
        self._reset()
        return out
