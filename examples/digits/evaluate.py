"""Accuracy of the running digits service on the hold-out images, over HTTP (KServe V1).

    python examples/digits/evaluate.py [--url http://127.0.0.1:8000] [--model digits]

The hold-out images were never seen in training (``make_data.py`` keeps them apart). Prints the
ensemble's accuracy and how many answers were degraded (answered by the fallback alone).
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent


def predict(url: str, model: str, images: list) -> dict:
    body = json.dumps({"instances": [{"image": img} for img in images]}).encode()
    req = urllib.request.Request(f"{url}/v1/models/{model}:predict", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="digits")
    p.add_argument("--data", type=Path, default=HERE / "data" / "holdout.parquet")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--json", action="store_true", help="Print the result as JSON.")
    args = p.parse_args(argv)
    table = pq.read_table(args.data).to_pydict()
    images, labels = table["image"], np.asarray(table["digit"])
    predicted, degraded, version = [], 0, None
    for at in range(0, len(images), args.batch):
        answer = predict(args.url, args.model, images[at:at + args.batch])
        predicted += answer["predictions"]
        degraded += len(answer["predictions"]) if answer.get("degraded") else 0
        version = answer.get("model_version")
    accuracy = float(np.mean(np.asarray(predicted) == labels))
    result = {"rows": len(labels), "accuracy": round(accuracy, 4), "degraded": degraded, "model_version": version}
    print(json.dumps(result) if args.json else
          f"{args.model}: accuracy {accuracy:.3f} on {len(labels)} hold-out images "
          f"({degraded} degraded answers; versions {version})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
