"""Write scikit-learn's 8x8 handwritten digits as the Parquet tables the example trains and checks on.

    python examples/digits/make_data.py            # -> examples/digits/data/{digits,holdout}.parquet

The data ship inside scikit-learn (1,797 images, no download). Each image is one *tensor feature*:
a Parquet fixed-size list of 8 fixed-size lists of 8 floats (``list<list<float>[8]>[8]``), which
raymedic reads as a feature of ``type: tensor, shape: [8, 8]`` (CSV cannot hold tensors). A seeded
300-image hold-out is kept out of training; ``evaluate.py`` sends it to the running service.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent


def image_column(images: np.ndarray) -> pa.Array:
    """``[N, H, W]`` float images as a fixed-size list of fixed-size lists (row-major)."""
    n, h, w = images.shape
    flat = pa.array(images.astype(np.float32).reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, w), h)


def write(images: np.ndarray, labels: np.ndarray, path: Path) -> None:
    table = pa.table({"image": image_column(images), "digit": pa.array(labels.astype(np.int64))})
    pq.write_table(table, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "data", help="Directory for the two tables.")
    p.add_argument("--holdout", type=int, default=300, help="Images kept out of training.")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("this example needs scikit-learn (it ships the digits): "
                         "pip install -e '.[examples]'") from None
    digits = load_digits()
    images, labels = digits.images / 16.0, digits.target  # pixel intensities 0..16 -> 0..1
    order = np.random.default_rng(args.seed).permutation(len(labels))
    hold, train = order[:args.holdout], order[args.holdout:]
    args.out.mkdir(parents=True, exist_ok=True)
    write(images[train], labels[train], args.out / "digits.parquet")
    write(images[hold], labels[hold], args.out / "holdout.parquet")
    print(f"wrote {len(train)} training images to {args.out / 'digits.parquet'} and {len(hold)} hold-out "
          f"images to {args.out / 'holdout.parquet'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
