"""The fuzz's requests (:mod:`tests.fuzz_requests`) through the gateway's parsers in-process (no Ray).

:mod:`tests.test_fuzz` sends them to a real service of the built-in model, which is all numeric; here the
same strategies, built from a schema with every feature type (float, int, text and boolean levels, a 2-D
tensor), go through what the gateway runs before any member is called: the body parser, the V2 translation,
instance and feedback validation, and the answer's encoder. Whatever a client sends, only an
:class:`~raymedic.errors.InvalidRequest` (a 4xx) may come out, and what goes back (an error, the rows'
warnings, the ids echoed, a V2 answer with the request's id) must encode as the gateway's JSON answer does.
"""

from __future__ import annotations

from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")  # the dev extra

from fastapi.responses import JSONResponse
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from raymedic.errors import InvalidRequest
from serve_apps.gateway.api import parse_json
from serve_apps.v2 import answer_to_v2, instances_from_v2
from serve_apps.validation import parse_feedback, parse_instances
from tests.fuzz_requests import REAL_ID, FuzzRequest, Model, requests
from train_jobs.schema import Feature, FeatureType, ModelSchema

SCHEMA = ModelSchema(features=(Feature("amount", FeatureType.FLOAT, min=0.0, max=9.0),
                               Feature("visits", FeatureType.INT, min=0, max=9),
                               Feature("channel", FeatureType.CATEGORICAL, levels=("web", "app")),
                               Feature("member", FeatureType.CATEGORICAL, levels=(False, True)),
                               Feature("signal", FeatureType.TENSOR, min=-1.0, max=1.0, shape=(2, 3),
                                       dtype="float32")),
                     target="label", classes=("churn", "stay"))
MODEL = Model(name="m", features=tuple(f.to_dict() for f in SCHEMA.features), classes=SCHEMA.classes,
              max_batch=64)


def _answer(req: FuzzRequest) -> Any:
    """What the gateway would answer before calling a member: its JSON document (raises InvalidRequest)."""
    body = parse_json(req.body.replace(REAL_ID.encode(), b"0" * 32))
    if req.path.endswith(":feedback"):
        fb = parse_feedback(body, SCHEMA, max_batch=MODEL.max_batch)
        return {"accepted": 0, "unknown_ids": fb.inference_ids}
    v2 = req.path.endswith("/infer")
    parsed = parse_instances(instances_from_v2(body, SCHEMA) if v2 else body, SCHEMA, max_batch=MODEL.max_batch)
    n = len(parsed.rows)
    out = {"predictions": ["stay"] * n, "probabilities": [[0.5, 0.5]] * n, "inference_ids": ["0" * 32] * n,
           "model_version": "v", "degraded": False, "warnings": parsed.warnings}
    return answer_to_v2(out, SCHEMA, MODEL.name, body.get("id") if isinstance(body.get("id"), str) else None) \
        if v2 else out


@settings(max_examples=15, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(st.lists(requests(MODEL), min_size=100, max_size=100, unique_by=lambda r: (r.path, r.body)))
def test_generated_requests_are_answered_or_refused_with_a_4xx_that_encodes(batch):
    for req in batch:
        try:
            doc = _answer(req)
        except InvalidRequest as exc:
            assert 400 <= exc.http_status < 500, req.show()
            doc = {"error": str(exc)}
        JSONResponse(doc)  # the gateway's encoder: raises on what cannot be sent (a lone surrogate, NaN)
