"""Resuming an interrupted local conversion: `convert.py --resume`.

Beside its shards, a conversion's scratch folder keeps its bookkeeping in the
hidden folder `.resume/` (which the swap leaves behind):

    plan.json        what defines the output: a SHA-256 fingerprint of the
                     converter version, the stored size, the pixel limit, the
                     classes and every planned shard with its source files
                     (path, label, size, modification time); and the settings,
                     to say which one differs
    <shard>.json     one per finished shard, written once the shard file is
                     closed: its count, bytes, class counts, skipped files and
                     its images' fingerprints (the duplicate search replays them)

A run with --resume takes the scratch folder of a dead run (`out_dir`'s rule:
this host, a PID that has ended) whose fingerprint is its own, checks every
shard with a sidecar against it (`verify.find_damage`: size, count and every
record's CRC), keeps those that pass and writes the others again. The
decoders and the shard writer are deterministic, so the result is the one an
uninterrupted run writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from typing import Any

import PIL

from pipeline import fileio
from pipeline import schema
from pipeline import verify
from pipeline.converter import config as config_lib
from pipeline.converter import out_dir
from pipeline.converter import plan as plan_lib
from pipeline.converter import write

BOOKKEEPING = ".resume"  # hidden: the swap moves only the records
PLAN_FILENAME = "plan.json"


@dataclasses.dataclass(frozen=True)
class Plan:
    """A conversion's fingerprint, and the settings that explain a mismatch."""

    fingerprint: str
    settings: dict[str, Any]


def make_plan(config: config_lib.ConversionConfig, planned: plan_lib.ConversionPlan) -> Plan:
    """The fingerprint of everything that decides the shards' bytes.

    That is: the converter's version, `config`'s stored size, pixel limit and
    `--duplicates` mode (drop decides which records are written; report and
    off, what the sidecars hold), the label order, and every planned shard
    with its source files. `config.output_settings` are kept to name what differs.
    """
    digest = hashlib.sha256()
    head = {
        "converter": f"schema {schema.SCHEMA_VERSION}, Pillow {PIL.__version__}",
        "stored_size": config.image_size,
        "max_pixels": config.max_pixels,
        "duplicates": config.duplicates.value,
        "class_names": list(planned.class_names),
    }
    digest.update(json.dumps(fileio.normalize_json(head), sort_keys=True).encode())
    for shard in planned.shards():
        files = [[im.path, im.relpath, im.label, im.size, im.mtime_ns] for im in shard.images]
        digest.update(json.dumps([shard.split, shard.filename, files]).encode())
    return Plan(digest.hexdigest(), fileio.normalize_json(config.output_settings(planned.class_names)))


def _bookkeeping(scratch: str, name: str) -> str:
    return os.path.join(scratch, BOOKKEEPING, name)


def write_plan(scratch: str, plan: Plan) -> None:
    fileio.write_json(_bookkeeping(scratch, PLAN_FILENAME), dataclasses.asdict(plan))


def read_plan(scratch: str) -> Plan | None:
    """The plan of a scratch folder; None if it has none that reads."""
    path = _bookkeeping(scratch, PLAN_FILENAME)
    try:
        data = fileio.read_json(path) if fileio.exists(path) else None
        return Plan(str(data["fingerprint"]), dict(data["settings"])) if data else None
    except (ValueError, KeyError, TypeError, OSError):
        return None


def write_result(scratch: str, result: write.ShardResult) -> None:
    """The sidecar of a shard just closed: from now on the shard counts as finished."""
    # Compact: a sidecar holds a fingerprint per image, and no one reads it but --resume.
    fileio.write_json(_bookkeeping(scratch, result.info.filename + ".json"), result.to_json(), indent=None)


def read_results(scratch: str, filenames: Iterable[str]) -> dict[str, write.ShardResult]:
    """filename -> write.ShardResult of the shards with a sidecar that reads."""
    results = {}
    for filename in filenames:
        path = _bookkeeping(scratch, filename + ".json")
        try:
            if fileio.exists(path):
                result = write.ShardResult.from_json(fileio.read_json(path))
                if result.info.filename == filename:
                    results[filename] = result
        except (ValueError, KeyError, TypeError, OSError):
            pass  # written again
    return results


def _flag(value: Any) -> str:
    """A setting as a flag value: [150, 150] -> 150,150; None -> (default)."""
    if value is None:
        return "(default)"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _differences(old: Plan, new: Plan) -> str:
    """What differs between two plans, for one line."""
    changed = [
        f"--{key}={_flag(old.settings.get(key))} (now {_flag(new.settings.get(key))})"
        for key in sorted(set(old.settings) | set(new.settings))
        if old.settings.get(key) != new.settings.get(key)
    ]
    if changed:
        return "was started with " + ", ".join(changed)
    return (
        "was started on other source files (added, removed or changed since) "
        "or by another converter version"
    )


def _say(message: str) -> None:
    print(f"--resume: {message}", file=sys.stderr)


def find(out: str, plan: Plan) -> str | None:
    """The scratch folder in `out` that a dead run with this plan left, or None, saying why.

    Of several, the one with the most finished shards.
    """
    candidates = out_dir.stale_scratch(out)
    plans = {name: read_plan(os.path.join(out, name)) for name in candidates}
    matching = [name for name, found in plans.items() if found and found.fingerprint == plan.fingerprint]
    if matching:
        return max(matching, key=lambda name: len(fileio.listdir(os.path.join(out, name, BOOKKEEPING))))
    if not candidates:
        _say(f"no interrupted conversion in {out}: converting from the start")
    else:
        name, found = next(((n, p) for n, p in plans.items() if p), (candidates[0], None))
        why = _differences(found, plan) if found else "has no plan (an older converter's)"
        _say(f"{name} {why}: converting from the start")
    return None


def verified_results(scratch: str, planned: plan_lib.ConversionPlan) -> dict[str, write.ShardResult]:
    """The finished shards of an adopted scratch folder that pass the check, by file name.

    Every planned shard with a sidecar is checked against it as verify.py
    checks a records folder (`find_damage`: the file's size, its record
    count, every record's CRC), through a provisional manifest of those
    shards. A shard that fails, or has no sidecar, is left to be written
    again, and its sidecar removed; a worker's unfinished file, removed.
    """
    for name in fileio.listdir(scratch):
        if name.endswith(write.PART_SUFFIX):  # a shard the dead run's worker was writing
            fileio.remove(os.path.join(scratch, name))
    results = read_results(scratch, [shard.filename for shard in planned.shards()])
    splits = {}
    for split_plan in planned.splits:
        mine = [results[f] for f in split_plan.shard_filenames if f in results and results[f].split == split_plan.name]
        if mine:
            splits[split_plan.name] = write.gather_split(split_plan.name, mine, planned.class_names)[0]
    kept: dict[str, write.ShardResult] = {}
    if splits:
        manifest = schema.Manifest(planned.dataset_name, planned.class_names, splits, None, scratch)
        schema.write_manifest(scratch, manifest)
        report = verify.find_damage(scratch)
        fileio.remove(os.path.join(scratch, schema.MANIFEST_FILENAME))
        damaged = set(report.by_file())
        if schema.MANIFEST_FILENAME not in damaged:
            kept = {
                shard.filename: results[shard.filename]
                for split in splits.values()
                for shard in split.shards
                if shard.filename not in damaged
            }
    for filename in set(results) - set(kept):
        fileio.remove(_bookkeeping(scratch, filename + ".json"))
    return kept


def open_scratch(
    config: config_lib.ConversionConfig, planned: plan_lib.ConversionPlan
) -> tuple[str, dict[str, write.ShardResult]]:
    """This run's scratch folder in `config.out`, and the shards it already holds.

    With `config.resume`, a dead run's folder of the same plan (`make_plan`),
    renamed to this run's, with its shards that pass the check; else (or if
    there is none) a new folder. Either way the other stale scratch folders
    are removed, and the plan is written for a later --resume.
    """
    out, plan = config.out, make_plan(config, planned)
    found = find(out, plan) if config.resume else None
    out_dir.remove_stale_scratch(out, keep=found)
    scratch, kept = None, {}
    if found:
        try:
            scratch = out_dir.adopt_scratch(os.path.join(out, found), out)
        except OSError as e:  # another run took it first
            _say(f"cannot take over {found} ({e}): converting from the start")
    if scratch is None:
        scratch = out_dir.make_scratch(out)
        write_plan(scratch, plan)
        return scratch, kept
    kept = verified_results(scratch, planned)
    total = sum(len(split_plan.shard_filenames) for split_plan in planned.splits)
    _say(f"kept {len(kept)} of {total} shards of {found} (checked); converting the rest")
    return scratch, kept
