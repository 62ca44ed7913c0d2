"""The tensor part of a version's reference document: what drift on a tensor feature is tested against.

:mod:`train_jobs.reference` summarises tabular features; a tensor feature gets its
own entry under the document's ``"tensors"`` key (:data:`TENSORS_KEY`), so the
tabular part is unchanged and a version without tensors has no such key:

``{"tensors": {feature: {"projection": ..., "coordinates": [...], "sample": [[...]], "held_out": [[...]],
"mmd": {...}, "cusum": {...}, "false_alarms_per_10k": ..., "rows": ...}}}``

Built from the training rows ``[N, *shape]`` of the feature, split three ways at
random so that each part is new to the others (a row the projection was fitted on
has a smaller residual than a live one; a held-out row that sat in the reference
would look closer to it than a live one): the projection
(:class:`train_jobs.projection.Projection`) is fitted on one part; the reference
sample (at most ``reference_rows`` projected rows) is a second; the third is held
out to calibrate the windowed MMD's threshold (:func:`train_jobs.mmd.calibrate_mmd`)
at ``mmd_share`` of the false-alarm budget. The held-out rows' projections are
stored too (``"held_out"``): the per-coordinate CUSUMs take the rest of the budget,
their thresholds simulated by the controller from the reference sample and those
rows (:func:`controllers.detectors.calibration.calibrate_features_given`), since
that simulation lives in the healing layer, which training must not import.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from raymedic.errors import DataError
from train_jobs.mmd import calibrate_mmd
from train_jobs.projection import EXPLAINED_VARIANCE, MAX_COMPONENTS, Projection

__all__ = [
    "TENSORS_KEY",
    "TensorDriftSettings",
    "tensor_entry",
    "tensor_entry_from_splits",
    "tensor_reference",
    "with_tensors",
]

TENSORS_KEY = "tensors"
"""Key of the tensor section in a version's reference document (absent: no tensor feature)."""
FORMAT = 1


@dataclass(frozen=True)
class TensorDriftSettings:
    """Sizes and budget of the tensor drift detectors, fixed when the version is trained."""

    max_components: int = MAX_COMPONENTS
    variance: float = EXPLAINED_VARIANCE
    reference_rows: int = 1000
    """Projected training rows kept as the reference sample (the MMD costs this many kernels per live row)."""
    held_out_rows: int = 2000
    """At most this many rows held out to calibrate the MMD threshold."""
    fit_rows: int = 10_000
    """At most this many rows fit the projection (an SVD of this many rows × elements)."""
    window: int = 200
    """Live rows per MMD window: a shift of half a reference sd in one coordinate shows within it."""
    step: int = 10
    """Rows between two MMD tests (each is a few differences of cumulated sums: testing often is cheap)."""
    false_alarms_per_10k: float = 0.05
    """False alarms per 10,000 rows of the MMD and the CUSUMs together (bench drift's budget)."""
    mmd_share: float = 0.5
    """Share of that budget the MMD takes; the per-coordinate CUSUMs get the rest."""
    calibration_paths: int = 600
    calibration_rows: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.mmd_share < 1:
            raise DataError(f"mmd_share must be in (0, 1), got {self.mmd_share}: the MMD and the CUSUMs both "
                            f"need part of the false-alarm budget")
        if not 0 < self.false_alarms_per_10k <= 1000:
            raise DataError(f"false_alarms_per_10k must be in (0, 1000], got {self.false_alarms_per_10k}")
        if self.reference_rows < 50:
            raise DataError(f"reference_rows must be >= 50, got {self.reference_rows}")

    @property
    def min_rows(self) -> int:
        """Training rows a tensor feature needs: a window of held-out rows, and as many each to fit and refer."""
        return 3 * max(self.window, 50)


def tensor_entry_from_splits(fit: np.ndarray, reference: np.ndarray, held_out: np.ndarray,
                             settings: TensorDriftSettings = TensorDriftSettings()) -> dict[str, Any]:
    """One feature's entry from three disjoint sets of training rows (see the module docstring)."""
    t0 = time.perf_counter()
    projection = Projection.fit(fit, max_components=settings.max_components, variance=settings.variance)
    ref, held = projection.transform(reference), projection.transform(held_out)
    mmd = calibrate_mmd(ref, held, window=settings.window, step=settings.step,
                        false_alarms_per_10k=settings.false_alarms_per_10k * settings.mmd_share,
                        paths=settings.calibration_paths, rows_per_path=settings.calibration_rows,
                        seed=settings.seed)
    return {
        "format": FORMAT,
        "rows": int(len(fit) + len(reference) + len(held_out)),
        "projection": projection.to_dict(),
        "coordinates": projection.coordinate_names,
        "sample": np.round(ref, 6).tolist(),
        "held_out": np.round(held, 6).tolist(),
        "false_alarms_per_10k": settings.false_alarms_per_10k,
        "mmd": mmd.to_dict(),
        "cusum": {"false_alarms_per_10k": settings.false_alarms_per_10k * (1.0 - settings.mmd_share),
                  "calibration": "held-out", "seed": settings.seed},
        "settings": asdict(settings),
        "fit_seconds": round(time.perf_counter() - t0, 3),
    }


def tensor_entry(rows: np.ndarray, settings: TensorDriftSettings = TensorDriftSettings()) -> dict[str, Any]:
    """One feature's entry from its training rows ``[N, *shape]``, split at random (seeded).

    Raises:
        DataError: Fewer rows than :attr:`TensorDriftSettings.min_rows`, or rows the projection refuses.
    """
    x = np.asarray(rows, dtype=float)
    if x.ndim < 2 or len(x) < settings.min_rows:
        raise DataError(f"tensor drift detection needs >= {settings.min_rows} training rows of the feature "
                        f"(a third each to fit the projection, to refer to and to calibrate on), got "
                        f"{len(x) if x.ndim else 0}: train on more rows or shorten the window")
    order = np.random.default_rng(settings.seed).permutation(len(x))
    n_ref = min(settings.reference_rows, len(x) // 3)
    n_held = min(settings.held_out_rows, len(x) // 3)
    ref_i, held_i = order[:n_ref], order[n_ref:n_ref + n_held]
    fit_i = order[n_ref + n_held:n_ref + n_held + settings.fit_rows]
    return tensor_entry_from_splits(x[fit_i], x[ref_i], x[held_i], settings)


def tensor_reference(arrays: Mapping[str, np.ndarray],
                     settings: TensorDriftSettings = TensorDriftSettings()) -> dict[str, dict[str, Any]]:
    """The ``"tensors"`` section: an entry per tensor feature, from its training rows ``[N, *shape]``.

    Raises:
        DataError: A feature's rows cannot be summarised; the message names the feature.
    """
    out = {}
    for name, rows in arrays.items():
        try:
            out[name] = tensor_entry(rows, settings)
        except DataError as exc:
            raise DataError(f"tensor feature {name!r}: {exc}") from exc
    return out


def with_tensors(reference_doc: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                 settings: TensorDriftSettings = TensorDriftSettings()) -> dict[str, Any]:
    """``reference_doc`` (the tabular :meth:`train_jobs.reference.Reference.to_dict`) with the tensor section
    added under :data:`TENSORS_KEY`; unchanged (no key) when there is no tensor feature."""
    doc = dict(reference_doc)
    if arrays:
        doc[TENSORS_KEY] = tensor_reference(arrays, settings)
    return doc
