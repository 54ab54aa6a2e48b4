# aibro-rs worker: imports predict.py from the current directory, calls load_model()
# once, then serves run() requests over stdin/stdout, and run_batch(model, items)
# requests when predict.py defines it (dynamic batching).
#
# Frames (both directions): u32 BE header length, header JSON, u32 BE body length, body.
# A batch request's header has "items": [{"content_type", "len"}, ...] and its body is
# the items' payloads one after the other; the reply's header has "items" with each
# item's outcome (and "len" of its output) and its body the outputs, in the same order.
# A request of content type application/vnd.aibro.tensors (Open Inference Protocol
# tensors) carries: u32 BE header length, header JSON {"inputs": [{"name", "datatype",
# "shape", "size"}], "outputs": [requested names]}, then each input's raw little-endian
# buffer (BYTES elements u32 LE length-prefixed); its reply has the same form, with
# "outputs" describing the output buffers. Such a request goes to infer(model, inputs)
# (numpy arrays by name) when predict.py defines it, else to run(model, data) (nested
# lists by name).
# The protocol uses private duplicates of fds 0 and 1; fd 1 is pointed at stderr so
# that print() in user code never corrupts the protocol, and fd 0 at /dev/null.
import base64
import functools
import importlib.util
import inspect
import json
import math
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
    run_batch = getattr(module, "run_batch", None)
    infer = getattr(module, "infer", None)
    return (module.run, (run_batch if callable(run_batch) else None),
            (infer if callable(infer) else None), model)


def decode_input(content_type, body):
    """(is_json, data, None) or (is_json, None, the error reply) for a payload."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    is_json = ctype in ("", "application/json")
    if not is_json:
        return False, body, None
    try:
        return True, (json.loads(body.decode("utf-8")) if body else None), None
    except (UnicodeDecodeError, ValueError) as e:
        return True, None, {"ok": False, "kind": "input",
                            "error": "the payload is not valid JSON (%s); send JSON or set a "
                                     "non-JSON content type to pass raw bytes" % e}


TENSORS = "application/vnd.aibro.tensors"
# Each fixed-size OIP datatype's struct (and numpy, with "<") type code.
_CODES = {"BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q",
          "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q",
          "FP16": "e", "FP32": "f", "FP64": "d"}
_NUMPY_NAMES = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
                "uint64": "UINT64", "int8": "INT8", "int16": "INT16", "int32": "INT32",
                "int64": "INT64", "float16": "FP16", "float32": "FP32", "float64": "FP64"}


def _is_tensors(content_type):
    return (content_type or "").split(";")[0].strip().lower() == TENSORS


def _bytes_elements(buf):
    out, pos = [], 0
    while pos < len(buf):
        (n,) = struct.unpack_from("<I", buf, pos)
        out.append(bytes(buf[pos + 4:pos + 4 + n]))
        pos += 4 + n
    return out


def _nest(flat, shape):
    """Row-major flat elements as nested lists of `shape`."""
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = math.prod(shape[1:])
    return [_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def _as_lists(meta, buf):
    if meta["datatype"] == "BYTES":
        flat = _bytes_elements(buf)
    else:
        code = _CODES[meta["datatype"]]
        flat = list(struct.unpack("<%d%s" % (len(buf) // struct.calcsize(code), code), buf))
    return _nest(flat, meta["shape"])


def _as_array(np, meta, buf):
    if meta["datatype"] == "BYTES":
        flat = np.empty(len(_bytes_elements(buf)), dtype=np.object_)
        flat[:] = _bytes_elements(buf)
        return flat.reshape(meta["shape"])
    dtype = np.dtype("<" + _CODES[meta["datatype"]])
    return np.frombuffer(bytearray(buf), dtype=dtype).reshape(meta["shape"])


def _read_tensors(body):
    """The request's header and each input's (description, buffer)."""
    (n,) = struct.unpack_from(">I", body, 0)
    header = json.loads(bytes(body[4:4 + n]).decode("utf-8"))
    parts, pos = [], 4 + n
    for meta in header["inputs"]:
        parts.append((meta, body[pos:pos + meta["size"]]))
        pos += meta["size"]
    return header, parts


# The OIP datatype of Python elements, by the set of their types.
_PYTHON_DATATYPES = [({bool}, "BOOL"), ({int}, "INT64"), ({int, float}, "FP64"),
                     ({str, bytes, bytearray}, "BYTES")]


def _python_datatype(flat):
    kinds = {type(x) for x in flat}
    for allowed, datatype in _PYTHON_DATATYPES:
        if kinds <= allowed:
            return datatype
    raise TypeError("an output mixes element types %s; use one of bool, int, float, str/bytes"
                    % sorted(k.__name__ for k in kinds))


def _shape_and_flat(value):
    """The shape of nested lists (or a scalar) and their elements in row-major order."""
    if not isinstance(value, (list, tuple)):
        return [], [value]
    if not any(isinstance(x, (list, tuple)) for x in value):
        return [len(value)], value
    shape, probe = [], value
    while isinstance(probe, (list, tuple)):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    flat = []

    def walk(v, depth):
        if not isinstance(v, (list, tuple)) or len(v) != shape[depth]:
            raise ValueError("an output's nested lists are ragged; each level needs one length")
        for x in v:
            if depth + 1 < len(shape):
                walk(x, depth + 1)
            else:
                flat.append(x)
    walk(value, 0)
    return shape, flat


def _pack(datatype, flat):
    if datatype == "BYTES":
        items = [x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in flat]
        return b"".join(struct.pack("<I", len(b)) + b for b in items)
    return struct.pack("<%d%s" % (len(flat), _CODES[datatype]), *flat)


def _encode_tensor(name, value):
    """(description, buffer) of one output: a numpy array, or nested lists / a scalar."""
    if hasattr(value, "dtype") and hasattr(value, "shape") and hasattr(value, "tobytes"):
        shape = [int(d) for d in value.shape]
        if value.dtype.kind in "OSU":
            datatype, buf = "BYTES", _pack("BYTES", value.reshape(-1).tolist())
        elif value.dtype.name in _NUMPY_NAMES:
            datatype = _NUMPY_NAMES[value.dtype.name]
            buf = value.astype("<" + _CODES[datatype]).tobytes()
        else:
            raise TypeError("output `%s` has numpy dtype %s, which has no OIP datatype"
                            % (name, value.dtype))
    else:
        shape, flat = _shape_and_flat(value)
        datatype = _python_datatype(flat)
        buf = _pack(datatype, flat)
    return {"name": name, "datatype": datatype, "shape": shape, "size": len(buf)}, buf


def _write_tensors(result, wanted):
    if not isinstance(result, dict):
        result = {"output0": result}
    names = wanted or list(result)
    missing = [n for n in names if n not in result]
    if missing:
        raise KeyError("the request asks for outputs %s, which the model did not return "
                       "(it returned %s)" % (missing, sorted(result)))
    encoded = [_encode_tensor(str(n), result[n]) for n in names]
    h = json.dumps({"outputs": [meta for meta, _ in encoded]}).encode("utf-8")
    return struct.pack(">I", len(h)) + h + b"".join(buf for _, buf in encoded)


def _numpy():
    try:
        import numpy
    except ImportError as e:
        raise ImportError("predict.py defines infer(), which takes numpy arrays, but numpy "
                          "cannot be imported (%s): add numpy to requirements.txt" % e) from e
    return numpy


def handle_tensors(run, infer, model, body):
    """An OIP request: infer(model, arrays by name), else run(model, lists by name)."""
    try:
        request, parts = _read_tensors(body)
    except (ValueError, KeyError, TypeError, struct.error) as e:
        return {"ok": False, "kind": "input", "error": "malformed tensor payload: %s" % e}, b""
    try:
        if infer is not None:
            np = _numpy()
            result = infer(model, {m["name"]: _as_array(np, m, b) for m, b in parts})
        else:
            result = run(model, {m["name"]: _as_lists(m, b) for m, b in parts})
        out = _write_tensors(result, request.get("outputs") or [])
    except BaseException:
        return {"ok": False, "kind": "run", "traceback": traceback.format_exc()}, b""
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return {"ok": True, "content_type": TENSORS}, out


def handle(run, nparams, model, header, body):
    is_json, data, bad = decode_input(header.get("content_type"), body)
    if bad is not None:
        return bad, b""
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


MAX_FRAME = 0xFFFFFFFF


def _results(run_batch, model, inputs):
    results = run_batch(model, inputs)
    if isinstance(results, (str, bytes, bytearray, dict)) or hasattr(results, "keys"):
        raise TypeError("run_batch() returned a %s; it must return a list with one output per "
                        "item, in order" % type(results).__name__)
    results = list(results)
    if len(results) != len(inputs):
        raise ValueError("run_batch() returned %d results for %d items; it must return "
                         "one per item, in order" % (len(results), len(inputs)))
    return results


def handle_batch(run_batch, tensors, model, header, body):
    """One run_batch call for the items that decode; each item gets its own reply.
    When the call itself fails, its traceback is sent once, for every item it had.
    Tensor items are not batched: each is answered by tensors(header, body)."""
    replies, inputs, pos, done = [], [], 0, {}
    for i, item in enumerate(header["items"]):
        payload = body[pos:pos + item["len"]]
        pos += item["len"]
        if _is_tensors(item.get("content_type")):
            done[i] = tensors(payload)
            replies.append(done[i][0] if not done[i][0]["ok"] else None)
            continue
        _, data, bad = decode_input(item.get("content_type"), payload)
        replies.append(bad)
        if bad is None:
            inputs.append(data)
    batch = {"ok": True}
    results = []
    if inputs:
        try:
            results = _results(run_batch, model, inputs)
        except BaseException:
            batch["traceback"] = traceback.format_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
    outputs, total, results = [], 0, iter(results)
    for i, reply in enumerate(replies):
        if reply is not None:
            continue
        if i in done:
            reply, out = done[i]
            replies[i] = dict(reply, len=len(out))
            outputs.append(out)
            total += len(out)
            continue
        if "traceback" in batch:
            replies[i] = {"ok": False, "kind": "batch"}
            continue
        try:
            ctype, out = encode_output(next(results))
            if total + len(out) > MAX_FRAME:
                raise ValueError("the batch's outputs are over 4 GiB together")
        except BaseException:
            replies[i] = {"ok": False, "kind": "output", "traceback": traceback.format_exc()}
            continue
        total += len(out)
        replies[i] = {"ok": True, "content_type": ctype, "len": len(out)}
        outputs.append(out)
    batch["items"] = replies
    return batch, b"".join(outputs)


def main():
    proto_in, proto_out = _open_protocol()
    try:
        run, run_batch, infer, model = load()
        nparams = _positional_params(run)
        tensors = functools.partial(handle_tensors, run, infer, model)
    except BaseException:
        sys.stderr.flush()
        write_frame(proto_out, {"ok": False, "traceback": traceback.format_exc()})
        return 1
    sys.stdout.flush()
    write_frame(proto_out, {"ok": True, "run_batch": run_batch is not None})
    while True:
        frame = read_frame(proto_in)
        if frame is None:
            return 0
        header, body = frame
        if "items" in header:
            reply, out = handle_batch(run_batch, tensors, model, header, body)
        elif _is_tensors(header.get("content_type")):
            reply, out = tensors(body)
        else:
            reply, out = handle(run, nparams, model, header, body)
        write_frame(proto_out, reply, out)


if __name__ == "__main__":
    sys.exit(main())
