"""Ray Serve peer for the predict-path bench: examples/echo as a Serve app.

The deployment loads examples/echo/predict.py itself (load_model() once per
replica, run(model, data) per request), decoding the body the way the aibro
worker does: JSON when the content type is empty or application/json, raw
bytes otherwise. Two replicas, HTTP on 127.0.0.1:PORT.

    python ray_echo.py PORT        (or RAY_ECHO_PORT=PORT python ray_echo.py)

Prints READY once it serves, then runs until SIGTERM, SIGINT or EOF on stdin,
and shuts Serve and Ray down.
"""

import importlib.util
import json
import os
import signal
import sys

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import ray  # noqa: E402
from ray import serve  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402

ECHO = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "echo", "predict.py"
)


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 1})
class Echo:
    def __init__(self, path):
        spec = importlib.util.spec_from_file_location("predict", path)
        self.predict = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.predict)
        self.model = self.predict.load_model()

    async def __call__(self, request: Request):
        body = await request.body()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in ("", "application/json"):
            try:
                data = json.loads(body.decode("utf-8")) if body else None
            except (UnicodeDecodeError, ValueError) as e:
                return JSONResponse({"error": "the payload is not valid JSON (%s)" % e}, 400)
        else:
            data = body
        return JSONResponse(self.predict.run(self.model, data))


class Stop(Exception):
    pass


def stop(signum, frame):
    raise Stop()


def main():
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ["RAY_ECHO_PORT"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Echo.bind(os.path.abspath(ECHO)), route_prefix="/")
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print("READY", flush=True)
        try:
            sys.stdin.read()
        except Stop:
            pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
