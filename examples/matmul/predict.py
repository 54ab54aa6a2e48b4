"""A model whose cost per call is fixed: one pass over a 4096 x 4096 weight
matrix (numpy), the way a GPU kernel reads its weights once per launch.
run() multiplies it by one input; run_batch() by all of a batch's inputs at
once: on 2 CPU cores a batch of 32 costs about five single calls (on a GPU,
about one)."""

import numpy as np

DIM = 4096


def load_model():
    return np.random.default_rng(0).standard_normal((DIM, DIM), dtype=np.float32)


def _features(item):
    return np.resize(np.asarray(item["x"], dtype=np.float32), DIM)


def run(model, data):
    return {"y": float((model @ _features(data)).sum())}


def run_batch(model, items):
    columns = np.stack([_features(item) for item in items], axis=1)
    return [{"y": float(y), "batch": len(items)} for y in (model @ columns).sum(axis=0)]
