"""data_service.py: a tf.data service dispatcher or worker, what the CPU hosts run.

    python data_service.py --role=dispatcher --port=5050 [--work_dir=gs://bucket/dispatcher]
    python data_service.py --role=worker --dispatcher=grpc://dispatcher-host:5050 --port=5051 --host=$(hostname)
    python train.py --records=gs://bucket/records --data_service=grpc://dispatcher-host:5050

Each server runs until it is stopped (Ctrl-C or SIGTERM). See pipeline/reader/service.py.
"""

from __future__ import annotations

import dataclasses
import os
import signal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first import

from pipeline import cli  # noqa: E402
from pipeline.reader import service  # noqa: E402



@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """data_service.py's flags, a field each: one dispatcher or worker."""

    role: service.Role = cli.setting(help="dispatcher or worker.")
    port: int = cli.setting(help="Port to listen on.", at_least=1, at_most=65535)
    work_dir: str | None = cli.setting(
        None, help="Dispatcher only: a folder (any tf.io.gfile URL) for its journal: fault tolerant restarts.")
    dispatcher: str | None = cli.setting(
        None, help="Worker only, and required for one: the dispatcher, grpc://HOST:PORT.")
    host: str = cli.setting("localhost", help="Worker only: the name or address trainers reach this worker at.")

    def __post_init__(self):
        cli.check_settings(self)
        if self.role is service.Role.WORKER and not self.dispatcher:
            raise cli.SettingError("--dispatcher is required for a worker: grpc://HOST:PORT")


# TF 2.21's servers take no bind address and no credentials (BUILD.md, GPUs and several machines).
_EXPOSED = (
    "data_service.py: warning: it listens on every network interface, with no authentication: whoever "
    "reaches this port can have the workers run a dataset graph that reads any file they can read. "
    "Let only the training job's own hosts reach it (a private network, or a firewall rule)"
)


def _serve(config: ServerConfig) -> None:
    if config.role is service.Role.WORKER:
        dispatcher = service.Address.parse(config.dispatcher, "--dispatcher")
        service.check_reachable(dispatcher, "--dispatcher")
    # A server keeps no state to save, and waits in C++ where Python's handler
    # never runs: Ctrl-C ends it at once, as SIGTERM does.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if config.role is service.Role.DISPATCHER:
        server = service.start_dispatcher(config.port, config.work_dir)
    else:
        server = service.start_worker(dispatcher, config.port, config.host)
    print(f"data_service.py: {config.role.value} listening on port {config.port}\n{_EXPOSED}", flush=True)
    server.join()


# A bad address, or a port in use.
DATA_SERVICE = cli.Command("data_service.py", __doc__, ServerConfig, _serve)
