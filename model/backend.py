"""The Keras backend the model commands run on: TensorFlow (the default) or JAX.

Keras takes its backend once, at its import, from KERAS_BACKEND (else
~/.keras/keras.json). TensorFlow reads the records under either: tf.data, the
decode and the export are TensorFlow's; only the model's steps run on JAX.

    KERAS_BACKEND=jax python train.py --records=records/

Keras and TensorFlow are imported inside the functions: `refuse_before_import`
runs before Keras's import, which fails with a traceback on a backend whose
package is not installed (torch, openvino).
"""

from __future__ import annotations

import os
import sys

from pipeline import cli

ENV_VAR = "KERAS_BACKEND"  # Keras's own variable
TENSORFLOW = "tensorflow"
JAX = "jax"
SUPPORTED = (TENSORFLOW, JAX)


class BackendError(cli.SettingError):
    """Keras runs on a backend the model commands do not support."""


def _unsupported(backend: str) -> str:
    return (f"{ENV_VAR}={backend}: the model commands run on {' or '.join(SUPPORTED)} only "
            f"(the input is tf.data, the export a SavedModel): unset {ENV_VAR}, or set it to {JAX}")


def refuse_before_import() -> None:
    """Ends the process with one line when KERAS_BACKEND names an unsupported backend: called
    before Keras's import (model/commands.py), which would fail there with a traceback
    (torch, openvino not installed) or start a run the commands refuse anyway."""
    asked = os.environ.get(ENV_VAR)
    if asked is None or asked in SUPPORTED or "keras" in sys.modules:
        return
    print(f"{os.path.basename(sys.argv[0]) or 'python'}: error: {_unsupported(asked)}", file=sys.stderr)
    raise SystemExit(1)


def name() -> str:
    """The backend Keras runs on: "tensorflow", "jax", ... (`keras.backend.backend()`)."""
    import keras

    return keras.backend.backend()


def check(backend: str | None = None) -> str:
    """The backend (`name()` unless given), if the model commands support it.

    Raises:
      BackendError: another one (torch, numpy, openvino), naming KERAS_BACKEND and the supported ones.
    """
    backend = name() if backend is None else backend
    if backend not in SUPPORTED:
        raise BackendError(_unsupported(backend))
    return backend


def describe() -> str:
    """One line with versions, e.g. "jax 0.10.2 (Keras 3.15.1), TensorFlow 2.21.0 for the input"."""
    import keras
    import tensorflow as tf

    if name() == JAX:
        import jax

        return f"jax {jax.__version__} (Keras {keras.__version__}), TensorFlow {tf.__version__} for the input"
    return f"tensorflow {tf.__version__} (Keras {keras.__version__})"


def prepare() -> str:
    """A model command's first step: checks the backend (`check`) and returns it. Under JAX, hides
    the GPUs from TensorFlow: tf.data needs none, and TensorFlow would take the memory JAX
    preallocates (75%). Runs no JAX computation: a multi-process run initializes JAX after it.

    Raises:
      BackendError: an unsupported backend.
    """
    backend = check()
    if backend == JAX:
        import tensorflow as tf
        from absl import logging

        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TensorFlow ran an op with its GPUs already (an earlier command in this process)
            logging.warning("TensorFlow already holds this process's GPUs: JAX may find less GPU memory")
    return backend
