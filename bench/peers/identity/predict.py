"""Identity model of the OIP bench rows: run(model, data) answers `{"y": data["x"]}`.

The plain predict URL hands run() the JSON `{"x": [...]}`; OIP infer (no
infer() here, so no numpy) hands it the input tensor `x` as a list. The same
user code answers both, so the two rows differ only by protocol.
"""


def load_model():
    return None


def run(model, data):
    return {"y": data["x"]}
