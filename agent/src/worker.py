# aibro-rs worker: imports predict.py from the current directory, calls load_model()
# once, then serves run() requests over stdin/stdout.
#
# Frames (both directions): u32 BE header length, header JSON, u32 BE body length, body.
# The protocol uses private duplicates of fds 0 and 1; fd 1 is pointed at stderr so
# that print() in user code never corrupts the protocol, and fd 0 at /dev/null.
import base64
import importlib.util
import inspect
import json
import os
import struct
import sys
import tempfile
import traceback

MAX_HEADER = 64 << 20


def _open_protocol():
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return proto_in, proto_out


def _read_exact(f, n):
    buf = f.read(n)
    if buf is None or len(buf) < n:
        return None
    return buf


def read_frame(f):
    raw = _read_exact(f, 4)
    if raw is None:
        return None
    (hlen,) = struct.unpack(">I", raw)
    if hlen > MAX_HEADER:
        raise ValueError("frame header too large")
    header = _read_exact(f, hlen)
    raw = _read_exact(f, 4)
    if header is None or raw is None:
        return None
    (blen,) = struct.unpack(">I", raw)
    body = _read_exact(f, blen) if blen else b""
    if body is None:
        return None
    return json.loads(header.decode("utf-8")), body


def write_frame(f, header, body=b""):
    h = json.dumps(header).encode("utf-8")
    f.write(struct.pack(">I", len(h)) + h + struct.pack(">I", len(body)))
    if body:
        f.write(body)
    f.flush()


def _json_default(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    if isinstance(x, (set, frozenset)):
        return list(x)
    if isinstance(x, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(x)).decode("ascii")
    if hasattr(x, "isoformat"):
        return x.isoformat()
    raise TypeError(
        "run() returned a value of type %s, which cannot be converted to JSON"
        % type(x).__name__
    )


def encode_output(result):
    if isinstance(result, (bytes, bytearray, memoryview)):
        return "application/octet-stream", bytes(result)
    body = json.dumps(result, default=_json_default).encode("utf-8")
    return "application/json", body


def _positional_params(fn):
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    n = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            return 2
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            n += 1
    return n


def _write_atomic(path, body):
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".aibro-")
    with os.fdopen(fd, "wb") as f:
        f.write(body)
    # os.replace swaps the name itself: a symlink there is replaced, not followed.
    os.replace(tmp, path)


def write_legacy_input(body, is_json):
    """Makes the payload available where run(model) reads it: this worker's data/."""
    data_dir = os.path.join(os.getcwd(), "data")
    os.makedirs(data_dir, exist_ok=True)
    names = [n for n in os.listdir(data_dir) if not n.startswith(".aibro-")]
    files = [n for n in names if os.path.isfile(os.path.join(data_dir, n))]
    if len(names) == 1 and len(files) == 1:
        target = files[0]
    else:
        target = "input.json" if is_json else "input.bin"
    _write_atomic(os.path.join(data_dir, target), body)


def load():
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:
        sys.path.insert(0, cwd)
    path = os.path.join(cwd, "predict.py")
    if not os.path.exists(path):
        raise FileNotFoundError("the repo has no predict.py at its root")
    spec = importlib.util.spec_from_file_location("predict", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["predict"] = module
    spec.loader.exec_module(module)
    for name in ("load_model", "run"):
        if not callable(getattr(module, name, None)):
            raise AttributeError("predict.py does not define %s()" % name)
    model = module.load_model()
    return module.run, model


def handle(run, nparams, model, header, body):
    ctype = (header.get("content_type") or "").split(";")[0].strip().lower()
    is_json = ctype in ("", "application/json")
    if is_json:
        try:
            data = json.loads(body.decode("utf-8")) if body else None
        except (UnicodeDecodeError, ValueError) as e:
            return {"ok": False, "kind": "input",
                    "error": "the payload is not valid JSON (%s); send JSON or set a "
                             "non-JSON content type to pass raw bytes" % e}, b""
    else:
        data = body
    try:
        if nparams >= 2:
            result = run(model, data)
        else:
            if not header.get("use_data_dir"):
                write_legacy_input(body, is_json)
            result = run(model) if nparams == 1 else run()
    except BaseException:
        return {"ok": False, "kind": "run", "traceback": traceback.format_exc()}, b""
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    try:
        ctype, out = encode_output(result)
    except BaseException:
        return {"ok": False, "kind": "output", "traceback": traceback.format_exc()}, b""
    return {"ok": True, "content_type": ctype}, out


def main():
    proto_in, proto_out = _open_protocol()
    try:
        run, model = load()
        nparams = _positional_params(run)
    except BaseException:
        sys.stderr.flush()
        write_frame(proto_out, {"ok": False, "traceback": traceback.format_exc()})
        return 1
    sys.stdout.flush()
    write_frame(proto_out, {"ok": True})
    while True:
        frame = read_frame(proto_in)
        if frame is None:
            return 0
        header, body = frame
        reply, out = handle(run, nparams, model, header, body)
        write_frame(proto_out, reply, out)


if __name__ == "__main__":
    sys.exit(main())
