"""Recent labelled data: the prediction log joined with the feedback log.

Retraining after drift must learn from what the service sees *now*, and the only
place that pairs today's inputs with their true labels is the durable logs under
``storage_path``: predictions (features as served) joined by ``inference_id`` to
the labels clients sent later. Rows come back time-ordered, so the newest slice
can be held out to judge a challenger on the most recent behaviour.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pandas as pd
import pyarrow as pa

from raymedic.keys import feedback_prefix, predictions_prefix
from raymedic.storage import Storage
from train_jobs._tensors import as_tensor
from train_jobs.schema import ModelSchema

__all__ = ["TS_COLUMN", "joined_labels", "recent_labeled"]

TS_COLUMN = "__ts__"
"""Prediction time of each row (Unix s); not a feature."""


def _read(storage: Storage, key: str, columns: list[str], since: float | None) -> pd.DataFrame:
    """Read the ``hour=YYYYMMDDHH`` partitions of ``key`` from the hour of ``since`` on (all if None):
    a retrain after hours of traffic must not re-read the whole history. A part that cannot be read is
    skipped with a warning (:meth:`~raymedic.storage.Storage.read_parquet_parts`): one bad file must
    not stop every retrain."""
    first = None if since is None else f"hour={time.strftime('%Y%m%d%H', time.gmtime(since))}"
    parts = [h for h in storage.listdir(key) if h.startswith("hour=") and (first is None or h >= first)]
    files = [f for h in parts for f in storage.list_files(f"{key}/{h}", suffix=".parquet")]
    tables = [t for _, t in storage.read_parquet_parts(files, columns=columns) if t.num_columns]
    if not tables:
        return pd.DataFrame(columns=columns)
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def joined_labels(storage: Storage, model: str, *, since: float | None = None) -> pd.DataFrame:
    """Every label of ``model`` joined to its logged answer by ``inference_id`` (answers at or after
    ``since``), in no particular order: columns ``inference_id``, ``ts``, ``features`` (the JSON row as
    served), ``label`` (JSON) and ``received_at``. When an id got several labels the first stands, as
    it does everywhere (a label is final: ``serve_apps.labels``; a second can only be a race between
    gateway replicas or a label too old to judge); a label whose answer is not in the log is not here.

    The one join of the two logs: the retrain reads it (:func:`recent_labeled`), and the durability
    checks count acknowledged labels against it, so "joined" means what a retrain would learn from.
    """
    # Labels arrive after their predictions, so the same hours bound both logs.
    preds = _read(storage, predictions_prefix(model), ["inference_id", "ts", "features"], since)
    labels = _read(storage, feedback_prefix(model), ["inference_id", "label", "received_at"], since)
    if since is not None and len(preds):
        preds = preds[preds["ts"] >= since]
    if not len(preds) or not len(labels):
        return pd.DataFrame(columns=["inference_id", "ts", "features", "label", "received_at"])
    labels = labels.sort_values("received_at").drop_duplicates("inference_id", keep="first")
    return preds.drop_duplicates("inference_id").merge(labels, on="inference_id", how="inner")


def recent_labeled(storage: Storage, model: str, schema: ModelSchema, *, since: float | None = None,
                   max_rows: int = 50_000) -> pd.DataFrame:
    """Labelled rows of ``model`` predicted at or after ``since``, oldest first.

    Columns: the schema's features (raw, as served; a tensor as a float32 array of its shape,
    as :func:`train_jobs.tables.load_table` gives it), the target column in the
    user's own label form, and :data:`TS_COLUMN`, one row per answer (its first label,
    :func:`joined_labels`). Labels that are not one of the schema's classes are
    dropped: a model cannot learn a class it does not have.
    """
    joined = joined_labels(storage, model, since=since)
    if not len(joined):
        return pd.DataFrame(columns=[*schema.feature_names, schema.target, TS_COLUMN])
    joined = joined.sort_values("ts").tail(max_rows)
    rows: list[list[Any]] = [json.loads(f) for f in joined["features"]]
    frame = pd.DataFrame(rows, columns=schema.feature_names)
    idx = [schema.class_index(json.loads(v)) for v in joined["label"]]
    keep = [i is not None for i in idx]
    # Each label in the schema's own form ("1" from a client becomes the int class 1).
    frame[schema.target] = pd.Series([schema.classes[i] if i is not None else None for i in idx], dtype=object)
    frame[TS_COLUMN] = joined["ts"].to_numpy()
    frame = frame[keep].reset_index(drop=True)
    for f in schema.features:  # JSON lost the dtypes: give numeric features theirs back
        if f.numeric:
            frame[f.name] = pd.to_numeric(frame[f.name], errors="coerce")
        elif f.tensor:  # nested lists → float32 arrays of the feature's shape, as a loaded table holds them
            shape = tuple(f.shape or ())
            frame[f.name] = pd.Series([None if v is None else as_tensor(v, shape) for v in frame[f.name]],
                                      dtype=object, index=frame.index)
    if len(frame) and all(type(c) is type(schema.classes[0]) for c in schema.classes):
        frame[schema.target] = frame[schema.target].astype(type(schema.classes[0]))
    return frame
