# aibro-rs trainer: runs one training job. Imports train.py from the current
# directory (the job's repo), makes `import aibro` give a module with
# report(epoch=None, total_epochs=None, **metrics), then calls
# train(output_dir, **args).
#
# Usage: trainer.py <output_dir> <args.json>; the environment variable
# AIBRO_PROGRESS_FD names the protocol pipe. The protocol is one JSON object per
# line on that pipe (never on stdout/stderr, which are the user's log):
#   {"type": "progress", "epoch": 3, "total_epochs": 20, "metrics": {"loss": 0.1}}
#   {"type": "done"}
#   {"type": "error", "traceback": "Traceback (most recent call last): ..."}
# Non-finite metric values are sent as the strings "NaN", "Infinity", "-Infinity".
import importlib.util
import json
import math
import numbers
import os
import sys
import threading
import traceback
import types


class _Channel:
    def __init__(self, fd):
        # User code (and anything it runs) must not inherit the pipe: a
        # subprocess holding it open would keep the agent waiting for EOF.
        os.set_inheritable(fd, False)
        self._f = os.fdopen(fd, "w", encoding="utf-8")
        self._lock = threading.Lock()

    def send(self, msg):
        line = json.dumps(msg, allow_nan=False) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()


def _metric(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        item = getattr(value, "item", None)
        if callable(item):
            value = item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                "aibro.report(): metric %r must be a number, not %s"
                % (name, type(value).__name__)
            )
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _count(name, value):
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            "aibro.report(): %s must be a non-negative int, not %r" % (name, value)
        )
    value = int(value)
    if value < 0 or value > 0xFFFFFFFF:
        raise ValueError("aibro.report(): %s out of range: %d" % (name, value))
    return value


def _make_aibro(channel):
    mod = types.ModuleType("aibro")
    mod.__doc__ = "aibro-rs training helpers (provided by the agent)."

    def report(epoch=None, total_epochs=None, **metrics):
        """Reports training progress: the epoch (from 1), the total number of
        epochs, and any numeric metrics (loss=..., accuracy=...)."""
        msg = {
            "type": "progress",
            "epoch": _count("epoch", epoch),
            "total_epochs": _count("total_epochs", total_epochs),
            "metrics": {str(k): _metric(k, v) for k, v in metrics.items()},
        }
        sys.stdout.flush()
        sys.stderr.flush()
        channel.send(msg)

    mod.report = report
    return mod


def _load_train():
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:
        sys.path.insert(0, cwd)
    path = os.path.join(cwd, "train.py")
    if not os.path.exists(path):
        raise FileNotFoundError(
            "the repo has no train.py at its root; define train(output_dir, **args) there"
        )
    spec = importlib.util.spec_from_file_location("train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module
    spec.loader.exec_module(module)
    train = getattr(module, "train", None)
    if not callable(train):
        raise AttributeError("train.py does not define train(output_dir, **args)")
    return train


def main():
    fd = int(os.environ.pop("AIBRO_PROGRESS_FD"))
    output_dir, args_path = sys.argv[1], sys.argv[2]
    channel = _Channel(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    with open(args_path, encoding="utf-8") as f:
        args = json.load(f)
    sys.modules["aibro"] = _make_aibro(channel)
    try:
        train = _load_train()
        train(output_dir, **args)
    except SystemExit as e:
        if e.code not in (None, 0):
            _failed(channel)
            return 1
    except BaseException:
        _failed(channel)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    channel.send({"type": "done"})
    return 0


def _failed(channel):
    sys.stdout.flush()
    sys.stderr.flush()
    channel.send({"type": "error", "traceback": traceback.format_exc()})


if __name__ == "__main__":
    sys.exit(main())
