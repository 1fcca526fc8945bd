"""Runs a tf.data service dispatcher or worker: what the CPU hosts run.

    python data_service.py --role=dispatcher --port=5050 [--work_dir=gs://bucket/dispatcher]
    python data_service.py --role=worker --dispatcher=grpc://dispatcher-host:5050 --port=5051 --host=$(hostname)
    python train.py --records=gs://bucket/records --data_service=grpc://dispatcher-host:5050

Each server runs until it is stopped (Ctrl-C or SIGTERM). See pipeline/service.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from pipeline import cli  # noqa: E402
from pipeline import service  # noqa: E402


_ROLE = flags.DEFINE_enum_class("role", None, service.Role, "dispatcher or worker.", case_sensitive=False, required=True)
_PORT = flags.DEFINE_integer("port", None, "Port to listen on.", lower_bound=1, upper_bound=65535, required=True)
_WORK_DIR = flags.DEFINE_string(
    "work_dir", None, "Dispatcher only: a folder (any tf.io.gfile URL) for its journal: fault tolerant restarts."
)
_DISPATCHER = flags.DEFINE_string("dispatcher", None, "Worker only: the dispatcher, grpc://HOST:PORT.")
_HOST = flags.DEFINE_string("host", "localhost", "Worker only: the name or address trainers reach this worker at.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        if _ROLE.value is service.Role.DISPATCHER:
            server = service.start_dispatcher(_PORT.value, _WORK_DIR.value)
        elif not _DISPATCHER.value:
            raise ValueError("--dispatcher is required for a worker: grpc://HOST:PORT")
        else:
            server = service.start_worker(service.Address.parse(_DISPATCHER.value, "--dispatcher"), _PORT.value, _HOST.value)
    except (ValueError, RuntimeError) as e:  # a bad address, or a port in use
        cli.fail("data_service.py", e)
    print(f"data_service.py: {_ROLE.value.value} listening on port {_PORT.value}", flush=True)
    server.join()


def run() -> None:
    """The `tfr-data-service` console entry point."""
    cli.run(main, "data_service.py")


if __name__ == "__main__":
    run()
