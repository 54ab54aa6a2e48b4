"""Fits a line y = w*x + b to data/points.csv by gradient descent.

An aibro-rs training repo: the agent calls train(output_dir, **args) with the
job's args (strings) and uploads whatever is written into output_dir. Run it by
hand with `python3 -c "import train; train.train('out')"`.
"""
import csv
import json
import os

try:
    from aibro import report  # provided by the aibro-rs agent while training
except ImportError:  # running by hand: progress reports go nowhere

    def report(epoch=None, total_epochs=None, **metrics):
        pass


HERE = os.path.dirname(os.path.abspath(__file__))


def load_points(path=os.path.join(HERE, "data", "points.csv")):
    with open(path, newline="") as f:
        return [(float(r["x"]), float(r["y"])) for r in csv.DictReader(f)]


def train(output_dir, epochs="20", lr="0.01"):
    epochs, lr = int(epochs), float(lr)
    points = load_points()
    n = len(points)
    w, b = 0.0, 0.0
    history = []
    for epoch in range(1, epochs + 1):
        grad_w = grad_b = 0.0
        for x, y in points:
            err = w * x + b - y
            grad_w += 2 * err * x / n
            grad_b += 2 * err / n
        w -= lr * grad_w
        b -= lr * grad_b
        loss = sum((w * x + b - y) ** 2 for x, y in points) / n
        history.append((epoch, loss))
        print("epoch %d/%d loss=%.6f w=%.4f b=%.4f" % (epoch, epochs, loss, w, b))
        report(epoch=epoch, total_epochs=epochs, loss=loss)
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "model.json"), "w") as f:
        json.dump({"w": w, "b": b}, f)
    with open(os.path.join(output_dir, "metrics.csv"), "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["epoch", "loss"])
        out.writerows(history)
    return {"w": w, "b": b}
