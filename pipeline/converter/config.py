"""One conversion's settings, `ConversionConfig`, and the error every refusal raises.

Low in the converter (it imports only `duplicates` and `imaging` for their
modes and limits), so that each step takes the config itself rather than its
fields one at a time. Users reach it as `conversion.ConversionConfig`.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Sequence
from typing import Any

from pipeline import cli
from pipeline import fileio
from pipeline.converter import duplicates as duplicates_lib
from pipeline.converter import imaging


# Several shards per split even when small: they are read in parallel.
DEFAULT_MIN_SHARDS = 4


class ConversionError(cli.UserError, ValueError):
    """The conversion cannot be done as asked; the message says why (`rules`)."""


class Runner(str, enum.Enum):
    """What writes the shards: this machine's decoding pool, or Apache Beam."""

    LOCAL = "local"
    BEAM = "beam"


class Verification(str, enum.Enum):
    """What the new records are checked for before they replace anything (`pipeline.verify`)."""

    RECORDS = "records"  # checksums, counts, labels, sizes: what can go wrong after the workers' decode
    FULL = "full"  # and every image decoded again


@dataclasses.dataclass(frozen=True)
class ConversionConfig:
    """One conversion: each field is a convert.py flag of the same name, its help the field's documentation.

    Python callers may give the enums as their values ("beam") and the
    tuples as lists. `show_progress` is no flag: convert.py draws the bar
    when stderr is a terminal.

    Raises (on construction):
      ConversionError: no `src`, a value out of range, an unknown runner or
        duplicate mode, or `resume` or `duplicates=drop` with the Beam runner.
    """

    src: str = cli.setting(
        help="Image folder: {train,validation,test}/<class>/* or <class>/*. A local path or a URL "
             "(gs://, s3://, hdfs://: any filesystem tf.io.gfile knows).")
    out: str = cli.setting(
        "records", help="Records folder to write (not inside --src): a local path or a URL.")
    classes: tuple[str, ...] | None = cli.setting(
        None, help="Class folder names in label order. Default: sorted folder names.")
    num_shards: int | None = cli.setting(
        None, at_least=1,
        help=f"Shards per split. Default: shards of up to --shard_mb, at least {DEFAULT_MIN_SHARDS} (when the split "
             "has that many images).")
    shard_mb: float = cli.setting(100.0, help="Target shard size in MiB.", above=0)
    image_size: tuple[int, int] | None = cli.setting(
        None, square=True,
        help="Store images resized to this size, S (square, e.g. 150) or H,W, so readers decode fewer "
             "pixels. Default: keep the originals.")
    workers: int | None = cli.setting(None, help="Decoding processes. Default: the number of cores.", at_least=1)
    seed: int = cli.setting(0, help="Seed of the shuffle before sharding (and of the validation hold-out).")
    validation_fraction: float = cli.setting(
        0.0, at_least=0, below=1,
        help="With no split folders: fraction of each class held out as validation.")
    strict: bool = cli.setting(False, help="Fail on any file that would be skipped.")
    overwrite: bool = cli.setting(False, help="Replace records (and TFDS metadata files) already in --out.")
    follow_external_links: bool = cli.setting(
        False, help="Use the files that symlinks in --src lead to outside it. Default: skip them.")
    max_file_mb: int = cli.setting(256, help="Skip files larger than this many MiB.", at_least=1)
    max_pixels: int = cli.setting(
        imaging.DEFAULT_MAX_PIXELS, help="Skip images of more pixels (width x height, read before decoding).",
        at_least=1)
    resume: bool = cli.setting(
        False,
        help="Keep the checked shards of an interrupted conversion into --out started with the same "
             "flags and files, and convert the rest. Local runner only.")
    duplicates: duplicates_lib.DuplicateMode = cli.setting(
        duplicates_lib.DuplicateMode.REPORT,
        help="Byte-identical and near-duplicate images: report them (summary, manifest.json), drop the later "
             "copies (local runner only), or skip the search.")
    verify: Verification = cli.setting(
        Verification.RECORDS,
        help="Check of the new records before they replace anything: records (checksums, counts, labels, "
             "sizes; each image was decoded when it was converted) or full (every image decoded again).")
    data_report: bool = cli.setting(
        True,
        help="Draw data_report.png into --out: class counts per split, image sizes, duplicate pairs "
             "(about half a second of CPU).")
    runner: Runner = cli.setting(
        Runner.LOCAL,
        help="What writes the shards: this machine's decoding processes, or an Apache Beam pipeline "
             "(needs the beam extra).")
    beam_pipeline_options: tuple[str, ...] = cli.setting(
        (),
        help="With --runner=beam: Beam options as key=value, comma separated, as tfds build takes them, "
             "e.g. runner=DataflowRunner,project=p,region=r. Default: the DirectRunner on --workers processes.")
    dask_scheduler: str | None = cli.setting(
        None,
        help="With --runner=beam: run the pipeline on this Dask cluster, its scheduler's address "
             "(tcp://HOST:8786; Beam's DaskRunner, needs the dask extra). Workers must reach --src and --out.")
    show_progress: bool = cli.setting(False, help="Draw a progress bar on stderr.", flag=False)

    # The fields that decide the records' bytes: what --resume compares.
    OUTPUT_FIELDS = (
        "src", "classes", "seed", "num_shards", "shard_mb", "image_size", "validation_fraction",
        "follow_external_links", "max_file_mb", "max_pixels", "duplicates",
    )

    def __post_init__(self):
        for name in ("classes", "image_size", "beam_pipeline_options"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))  # lists from flags or callers
        for name, kind in (("runner", Runner), ("duplicates", duplicates_lib.DuplicateMode), ("verify", Verification)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                raise ConversionError(
                    f"--{name} must be {' or '.join(k.value for k in kind)}, got {getattr(self, name)!r}"
                ) from None
        cli.check_settings(self, ConversionError)
        if self.image_size is not None and min(self.image_size) < 1:
            raise ConversionError(f"--image_size must be at least 1, got {self.image_size}")
        if self.resume and self.runner is Runner.BEAM:
            raise ConversionError("--resume is not supported with --runner=beam (only with the local runner)")
        if self.dask_scheduler and self.runner is not Runner.BEAM:
            raise ConversionError("--dask_scheduler needs --runner=beam")
        if self.dask_scheduler and any(o.strip().startswith("runner=") for o in self.beam_pipeline_options):
            raise ConversionError("--dask_scheduler names the runner (Beam's DaskRunner): "
                                  "drop runner= from --beam_pipeline_options")
        if self.duplicates is duplicates_lib.DuplicateMode.DROP and self.runner is Runner.BEAM:
            raise ConversionError("--duplicates=drop is not supported with --runner=beam (only with the local runner): "
                                  "--duplicates=report lists them")

    @property
    def shard_bytes(self) -> int:
        return int(self.shard_mb * 2**20)

    @property
    def num_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def fingerprints(self) -> bool:
        """Whether the decoders fingerprint each image: for any duplicate search."""
        return self.duplicates is not duplicates_lib.DuplicateMode.OFF

    def output_settings(self, class_names: Sequence[str]) -> dict[str, Any]:
        """flag name -> value of what decides the output, with the classes as found."""
        settings = {name: getattr(self, name) for name in self.OUTPUT_FIELDS}
        return dict(settings, src=fileio.absolute(self.src), classes=",".join(class_names))
