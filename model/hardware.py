"""The hardware a run finds, and the settings that fit it.

Mixed precision and XLA are for accelerators: on a CPU they slow training or
gain nothing (docs/performance.md, "GPU settings on a CPU"), so a CPU-only run
warns about them, with the figure measured on its backend. Where the
augmentation runs by default follows the hardware too: on a GPU the device warp
frees the host cores; on a CPU the host warp is the faster one.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from model import backend


@dataclasses.dataclass(frozen=True)
class CpuCosts:
    """What each GPU-only setting does on a CPU under one backend, as its warning quotes it;
    None where there is nothing to warn of."""

    mixed_precision: str | None
    jit_compile: str | None


# Measured on a 2-core CPU (docs/performance.md, "GPU settings on a CPU"). TensorFlow's bfloat16
# is another matter on a CPU with bf16 instructions: 2x faster there (BF16_FLAGS, no warning).
CPU_COSTS = {
    backend.TENSORFLOW: CpuCosts(
        mixed_precision="bfloat16 is emulated on a CPU without bf16 instructions: about 9x slower on a 2-core CPU",
        jit_compile="XLA made slower CPU code for this CNN: about 2.3x slower on a 2-core CPU",
    ),
    backend.JAX: CpuCosts(
        mixed_precision="bfloat16 made no faster step under JAX on a 2-core CPU (1.0-1.3x slower)",
        jit_compile=None,  # under JAX XLA compiles every step anyway
    ),
}


@dataclasses.dataclass(frozen=True)
class Hardware:
    """The devices the Keras backend sees.

    Attributes:
      gpus: one name per GPU.
      cpu_cores: the host's cores.
      backend: the Keras backend that looked ("tensorflow" or "jax").
      cpu_devices: under JAX without a GPU, the CPU devices it sees (1 unless
        XLA_FLAGS=--xla_force_host_platform_device_count says more).
      cpu_bf16: the CPU has bfloat16 instructions (BF16_FLAGS).
    """

    gpus: tuple[str, ...]
    cpu_cores: int
    backend: str = backend.TENSORFLOW
    cpu_devices: int = 1
    cpu_bf16: bool = False

    def describe(self) -> str:
        if self.gpus:
            return f"{len(self.gpus)} GPU(s): {', '.join(self.gpus)}; {self.cpu_cores} CPU cores"
        if self.backend == backend.JAX:
            return f"CPU only ({self.cpu_cores} cores; JAX sees {self.cpu_devices} CPU device(s))"
        return f"CPU only ({self.cpu_cores} cores)"


# /proc/cpuinfo flags of CPUs that compute in bfloat16 (Intel AMX, AVX-512 BF16).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpu_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # not Linux
        return False
    return any(flag in flags for flag in BF16_FLAGS)


def detect() -> Hardware:
    """The GPUs the backend can use, by name, and the CPU cores (JAX's devices: this process's)."""
    cores = os.cpu_count() or 1
    if backend.name() == backend.JAX:
        import jax  # imported by Keras already under JAX

        devices = jax.local_devices()  # after jax.distributed.initialize, where a run makes one
        gpus = tuple(d.device_kind for d in devices if d.platform == "gpu")
        return Hardware(gpus, cores, backend.JAX, 0 if gpus else len(devices), _cpu_bf16())
    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name", gpu.name))
    return Hardware(gpus=tuple(names), cpu_cores=cores, cpu_bf16=_cpu_bf16())


def cpu_only_warnings(hardware: Hardware, mixed_precision: bool, jit_compile: bool) -> list[str]:
    """One line per setting that is known to slow (or not to help) training on this hardware."""
    if hardware.gpus:
        return []
    costs = CPU_COSTS[hardware.backend]
    bf16_fast = hardware.cpu_bf16 and hardware.backend == backend.TENSORFLOW
    asked = (("mixed_precision", mixed_precision, None if bf16_fast else costs.mixed_precision),
             ("jit_compile", jit_compile, costs.jit_compile))
    return [f"--{flag} on a machine without a GPU: {cost}; leave it off here"
            for flag, on, cost in asked if on and cost]
