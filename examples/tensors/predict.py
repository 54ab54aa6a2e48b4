"""Tensors model (used by the tests): Open Inference Protocol requests.

infer(model, inputs) gets each input tensor as a numpy array by name and
returns arrays by output name: numbers doubled (`{name}_doubled`) and summed
(`{name}_sum`, a 0-d array of the input's dtype), byte strings upper-cased
(`{name}_upper`). An input named `fail` makes it raise. run(model, data)
serves the plain AIbro predict URL: `{"values": [...]}` doubled.
"""

import numpy as np


def load_model():
    return {"scale": 2}


def infer(model, inputs):
    if "fail" in inputs:
        raise ValueError("asked to fail")
    out = {}
    for name, x in inputs.items():
        if x.dtype == object:
            upper = [bytes(b).upper() for b in x.reshape(-1)]
            out[name + "_upper"] = np.array(upper, dtype=object).reshape(x.shape)
        else:
            out[name + "_doubled"] = x * np.array(model["scale"], dtype=x.dtype)
            out[name + "_sum"] = np.asarray(x.sum(dtype=x.dtype))
    return out


def run(model, data):
    return {"doubled": [v * model["scale"] for v in data.get("values", [])]}
