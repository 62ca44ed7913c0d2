"""What is deployed: the config and serving versions ``raymedic up`` handed the controller, and what
the controller derives from those versions (golden sets, the data monitor, the accuracy to expect).

The controller reads this document from storage rather than from its constructor
arguments, so a controller Ray restarts after a crash runs on the latest config,
and a promotion or rollback writes the new versions back so the next restart
serves them too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

from controllers.monitors.data import DataMonitor
from raymedic.config import RaymedicConfig
from raymedic.keys import controller_config_key
from raymedic.storage import Storage
from train_jobs.artifacts import GOLDEN, PREPROCESS, REFERENCE, GoldenSet
from train_jobs.reference import Reference
from train_jobs.registry import ModelRegistry
from train_jobs.schema import ModelSchema
from train_jobs.tensor_reference import TENSORS_KEY

__all__ = ["Deployment", "load_deployment", "record_versions", "load_golden"]


@dataclass(frozen=True)
class Deployment:
    """The deployed config and versions, and what the controller derived from them.

    Attributes:
        cfg: The validated configuration.
        versions: member → the version serving now (the champion when it was deployed or promoted).
        golden: member → the golden set of its serving version (members without one are not probed).
        monitor: A fresh data monitor on the versions' schema and training reference (None for
            versions trained before schemas were stored).
        reference_accuracy: The best member's held-out accuracy: the ensemble should do at least as
            well live.
        n_classes: Classes of the schema (None without a schema: no performance checks).
    """

    cfg: RaymedicConfig
    versions: Mapping[str, str]
    golden: Mapping[str, GoldenSet]
    monitor: DataMonitor | None
    reference_accuracy: float | None
    n_classes: int | None

    @property
    def members(self) -> list[str]:
        """The members' names in config order."""
        return [m.name for m in self.cfg.members]


def load_deployment(storage: Storage, model: str) -> Deployment:
    """Read the deployed document and every serving version's files from the registry.

    Raises:
        Whatever the storage or the registry raise: a controller that cannot read what it is to
        heal must not start (Ray restarts it and it tries again).
    """
    doc = json.loads(storage.read_text(controller_config_key(model)))
    cfg = RaymedicConfig.model_validate(doc["config"])
    versions: dict[str, str] = dict(doc["versions"])
    golden: dict[str, GoldenSet] = {}
    registry = ModelRegistry(storage)
    schema, reference, tensors = None, None, None
    val_acc: list[float] = []
    for member, version in versions.items():
        loaded = registry.load(model, member, version)
        files = loaded.files
        acc = (loaded.info.metadata.get("metrics") or {}).get("val_accuracy")
        if acc is not None:
            val_acc.append(float(acc))
        if GOLDEN in files:
            golden[member] = GoldenSet.from_dict(json.loads(files[GOLDEN]))
        if schema is None and PREPROCESS in files:
            schema = ModelSchema.from_dict(json.loads(files[PREPROCESS])["schema"])
        if reference is None and REFERENCE in files:  # members share one training split
            reference_doc = json.loads(files[REFERENCE])
            reference = Reference.from_dict(reference_doc)
            tensors = reference_doc.get(TENSORS_KEY)  # None for tabular models: no tensor monitor
    # Versions trained before references existed still get data-quality checks, just no drift tests.
    monitor = DataMonitor(schema, reference, cfg.data, tensors=tensors) if schema is not None else None
    return Deployment(cfg=cfg, versions=versions, golden=golden, monitor=monitor,
                      reference_accuracy=max(val_acc) if val_acc else None,
                      n_classes=len(schema.classes) if schema is not None else None)


def record_versions(storage: Storage, model: str, versions: Mapping[str, str]) -> None:
    """Write new serving versions into the deployed document (a promotion or rollback swapped them
    in): a restarted controller, and a retrain job reading the same file, see them."""
    key = controller_config_key(model)
    doc = json.loads(storage.read_text(key))
    doc["versions"] = {**doc["versions"], **versions}
    storage.write_text(key, json.dumps(doc))


def load_golden(storage: Storage, model: str, member: str, version: str) -> GoldenSet | None:
    """The golden set of one registered version (None if it has none). Blocking: run it in a thread."""
    files = ModelRegistry(storage).load(model, member, version).files
    return GoldenSet.from_dict(json.loads(files[GOLDEN])) if GOLDEN in files else None
