# An original-style AIbro repo: run(model) takes no payload; it reads its input
# from ./data/data.json, and load_model() reads ./model/, both relative to the
# repo root, exactly as the AIbro templates did. It must deploy unchanged.
import json


def load_model():
    fp = open("./model/weights.json", "r")
    weights = json.load(fp)
    fp.close()
    return weights


def run(model):
    fp = open("./data/data.json", "r")
    data = json.load(fp)
    fp.close()
    numbers = data["data"]
    total = sum(numbers)
    result = {
        "data": data,
        "sum": total,
        "scaled_sum": total * model["scale"],
    }
    return result
