"""data_service.py: a tf.data service dispatcher or worker, what the CPU hosts run.

    python data_service.py --role=dispatcher --port=5050 [--work_dir=gs://bucket/dispatcher]
    python data_service.py --role=worker --dispatcher=grpc://dispatcher-host:5050 --port=5051 --host=$(hostname)
    python train.py --records=gs://bucket/records --data_service=grpc://dispatcher-host:5050

Each server runs until it is stopped (Ctrl-C or SIGTERM). See pipeline/reader/service.py.
"""

from __future__ import annotations

import os
import signal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first import

from absl import flags  # noqa: E402

from pipeline import cli  # noqa: E402
from pipeline.reader import service  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_enum_class(
    "role", None, service.Role, "dispatcher or worker.", case_sensitive=False, required=True, flag_values=FLAGS
)
flags.DEFINE_integer(
    "port", None, "Port to listen on.", lower_bound=1, upper_bound=65535, required=True, flag_values=FLAGS
)
flags.DEFINE_string(
    "work_dir", None, "Dispatcher only: a folder (any tf.io.gfile URL) for its journal: fault tolerant restarts.",
    flag_values=FLAGS,
)
flags.DEFINE_string("dispatcher", None, "Worker only: the dispatcher, grpc://HOST:PORT.", flag_values=FLAGS)
flags.DEFINE_string(
    "host", "localhost", "Worker only: the name or address trainers reach this worker at.", flag_values=FLAGS
)


# TF 2.21's servers take no bind address and no credentials (BUILD.md, GPUs and several machines).
_EXPOSED = (
    "data_service.py: warning: it listens on every network interface, with no authentication: whoever "
    "reaches this port can have the workers run a dataset graph that reads any file they can read. "
    "Let only the training job's own hosts reach it (a private network, or a firewall rule)"
)


def _serve() -> None:
    if FLAGS.role is service.Role.WORKER:
        if not FLAGS.dispatcher:
            cli.fail("--dispatcher is required for a worker: grpc://HOST:PORT")
        dispatcher = service.Address.parse(FLAGS.dispatcher, "--dispatcher")
        service.check_reachable(dispatcher, "--dispatcher")
    # A server keeps no state to save, and waits in C++ where Python's handler
    # never runs: Ctrl-C ends it at once, as SIGTERM does.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if FLAGS.role is service.Role.DISPATCHER:
        server = service.start_dispatcher(FLAGS.port, FLAGS.work_dir)
    else:
        server = service.start_worker(dispatcher, FLAGS.port, FLAGS.host)
    print(f"data_service.py: {FLAGS.role.value} listening on port {FLAGS.port}\n{_EXPOSED}", flush=True)
    server.join()


# A bad address, or a port in use.
DATA_SERVICE = cli.Command("data_service.py", __doc__, FLAGS, _serve, errors=(ValueError, RuntimeError))
