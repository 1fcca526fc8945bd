"""The hardware a run finds, and the settings that fit it.

Mixed precision and XLA are for accelerators: on a CPU they slow training
(docs/performance.md, "GPU settings on a CPU"), so a CPU-only run warns about them.
Where the augmentation runs by default follows the hardware too: on a GPU the
device warp frees the host cores; on a CPU the host warp is the faster one.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

# The measured factor of each GPU-only setting on a CPU, quoted by the
# CPU-only warnings (docs/performance.md, "GPU settings on a CPU").
CPU_COSTS = {
    "mixed_precision": "bfloat16 is emulated on a CPU: about 9x slower on a 2-core CPU",
    "jit_compile": "XLA made slower CPU code for this CNN: about 2.3x slower on a 2-core CPU",
}


@dataclasses.dataclass(frozen=True)
class Hardware:
    """The devices TensorFlow sees."""

    gpus: tuple[str, ...]  # one name per GPU
    cpu_cores: int

    def describe(self) -> str:
        if not self.gpus:
            return f"CPU only ({self.cpu_cores} cores)"
        return f"{len(self.gpus)} GPU(s): {', '.join(self.gpus)}; {self.cpu_cores} CPU cores"


def detect() -> Hardware:
    """The GPUs TensorFlow can use, by name, and the CPU cores."""
    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name", gpu.name))
    return Hardware(gpus=tuple(names), cpu_cores=os.cpu_count() or 1)


def cpu_only_warnings(hardware: Hardware, mixed_precision: bool, jit_compile: bool) -> list[str]:
    """One line per setting that is known to slow training on this hardware."""
    if hardware.gpus:
        return []
    asked = {"mixed_precision": mixed_precision, "jit_compile": jit_compile}
    return [
        f"--{name} on a machine without a GPU: {CPU_COSTS[name]}; leave it off here"
        for name, on in asked.items()
        if on
    ]
