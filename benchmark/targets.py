"""The issues' targets (#3, #8, #17), as data; `report.evaluate` judges them on a run."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RatioTarget:
    """Images/s of the numerator row over the denominator row's: at least `threshold`.

    Where a side names several rows, its fastest (by median) counts, and the
    description says which it was.
    """

    name: str
    numerator: tuple[str, ...]
    numerator_text: str
    denominator: tuple[str, ...]
    denominator_text: str
    threshold: float


@dataclasses.dataclass(frozen=True)
class GrowthTarget:
    """Resident memory over the uncached streaming epochs: median of the last `window` minus the first `window`.

    The allocator moves the resident size by tens of MiB either way; memory
    that grew with the data would add at least the split's encoded size (45 MB
    for cat_dog_small's train split) every epoch.
    """

    name: str
    window: int
    threshold_mib: float


@dataclasses.dataclass(frozen=True)
class PeakTarget:
    """The benchmark process's peak resident memory: below `threshold_mib`."""

    name: str
    threshold_mib: float


Target = RatioTarget | GrowthTarget | PeakTarget

TARGETS: tuple[Target, ...] = (
    RatioTarget("aug_cached_vs_idg_aug", ("pipeline_aug_cached",), "steady host-aug cached pipeline",
                ("idg_augment",), "ImageDataGenerator with augmentation", threshold=20.0),
    RatioTarget("plain_vs_idg_rescale", ("pipeline_steady", "pipeline_steady_cached", "resized_steady"),
                "steady no-aug pipeline", ("idg_rescale",), "ImageDataGenerator rescale only", threshold=20.0),
    RatioTarget("cold_vs_ceiling", ("pipeline_cold",), "pipeline cold 1st epoch",
                ("ceiling", "ceiling_autotune"), "decode ceiling", threshold=0.9),
    RatioTarget("training_vs_in_memory", ("train_pipeline_aug_cached",),
                "training fed by the pipeline (host aug, cache)", ("train_in_memory",), "one batch in memory",
                threshold=0.95),
    RatioTarget("tfops_aug_cached_vs_idg_aug", ("pipeline_aug_tfops_cached",), "steady TF-ops-aug cached pipeline",
                ("idg_augment",), "ImageDataGenerator with augmentation", threshold=10.0),  # issue #8
    RatioTarget("service_vs_in_process", ("service_1_worker",), "tf.data service, 1 local worker",
                ("pipeline_aug_tfops",), "the same pipeline in-process", threshold=0.8),  # issue #8
    RatioTarget("predict_vs_eval_uncached", ("predict_files",), "predict.py's reading of the image files",
                ("pipeline_steady",), "the reader's uncached evaluation", threshold=0.8),  # issue #17
    GrowthTarget("streaming_memory_growth", window=3, threshold_mib=100.0),
    PeakTarget("peak_memory", threshold_mib=2048.0),  # 2 GiB
)
