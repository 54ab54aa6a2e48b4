"""Echo model: the smallest AIbro repo. Deploy it, send any JSON, get it back.

load_model() reads model/config.json; run(model, data) returns the request
payload together with the model's name and version, so a round trip shows
that the model was loaded and that the payload arrived intact. The output is
deterministic, which makes the repo handy in tests.
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def load_model():
    with open(os.path.join(HERE, "model", "config.json")) as f:
        config = json.load(f)
    return {"name": config["name"], "version": config["version"]}


def run(model, data):
    if isinstance(data, (bytes, bytearray)):
        # Non-JSON content types arrive as raw bytes.
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            data = {"bytes": len(data)}
    return {
        "echo": data,
        "model": model,
    }
