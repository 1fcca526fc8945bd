"""convert.py --resume: an interrupted conversion keeps its finished shards, and ends as an uninterrupted one.

One `python convert.py` is killed (SIGKILL, by its PID) once a few shards are
finished (their sidecars are in the scratch folder); `--resume` must keep
those files as they are and write the others, and the folder must then equal,
byte for byte, one converted without interruption. A copy of the scratch
folder the kill left serves the in-process cases: a changed flag or file, a
damaged shard, nothing to resume. The resumed runs are convert.py's main in
this process.
"""

from __future__ import annotations

import os
import shutil
import signal
import textwrap
from pathlib import Path

import pytest

from support import cli
from support import processes
from support.images import make_image_tree
from support.records import convert, files
from pipeline.converter import conversion
from pipeline.converter import out_dir
from pipeline.converter import resume as resume_lib
from pipeline.converter.commands import CONVERT

# 120 distinct flat images of 800x800: a few ms each to decode, so the run is
# caught with most of its 24 shards to go; train 96 in 12 shards, validation
# 24 in 12.
COUNTS = {"cats": 60, "dogs": 60}
SIZE = (800, 800)
FLAGS = {"num_shards": 12, "image_size": (16, 16), "validation_fraction": 0.2, "workers": 1, "data_report": False}
NUM_SHARDS = 24
KILL_AFTER = 3  # finished shards


def _cli_flags(**changes) -> list[str]:
    values = {**FLAGS, **changes}
    return [
        f"--{name}={value[0] if name == 'image_size' else value}" for name, value in values.items()
    ]


def _scratch_folders(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name.startswith(out_dir.SCRATCH_PREFIX)] if out.is_dir() else []


def _finished(scratch: Path) -> list[str]:
    """The shards of a scratch folder with a sidecar."""
    try:
        names = os.listdir(scratch / resume_lib.BOOKKEEPING)
    except FileNotFoundError:
        return []
    sidecars = [n for n in names if n.endswith(".json") and n != resume_lib.PLAN_FILENAME]
    return sorted(n.removesuffix(".json") for n in sidecars)


def _identity(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_ino, info.st_mtime_ns


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_image_tree(tmp_path_factory.mktemp("resume") / "pets", "flat", COUNTS, SIZE).root


@pytest.fixture(scope="module")
def reference(tree, tmp_path_factory) -> dict[str, bytes]:
    """The files of an uninterrupted conversion."""
    out = tmp_path_factory.mktemp("reference") / "records"
    convert(tree, out, **FLAGS)
    return files(out)


@pytest.fixture(scope="module")
def killed(tree, tmp_path_factory):
    """A run killed after KILL_AFTER shards: (out, its scratch folder, {finished shard: (inode, mtime)},
    a copy of that scratch folder)."""
    root = tmp_path_factory.mktemp("killed")
    out = root / "records"
    with processes.start("convert.py", f"--src={tree}", f"--out={out}", *_cli_flags()) as proc:
        processes.wait_until(
            proc, lambda: any(len(_finished(s)) >= KILL_AFTER for s in _scratch_folders(out)), f"{KILL_AFTER} shards"
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    (scratch,) = _scratch_folders(out)
    finished = {name: _identity(scratch / name) for name in _finished(scratch)}
    assert KILL_AFTER <= len(finished) < NUM_SHARDS, finished
    copy = root / "copy" / scratch.name
    shutil.copytree(scratch, copy)
    return out, scratch, finished, copy


def _out_with(copy: Path, tmp_path: Path) -> Path:
    """A records folder holding (a copy of) the killed run's scratch folder, as the kill left it."""
    out = tmp_path / "records"
    shutil.copytree(copy, out / copy.name)
    return out


def test_resume_keeps_the_finished_shards_and_equals_an_uninterrupted_run(tree, killed, reference):
    out, scratch, finished, _ = killed
    resumed = cli.run(CONVERT, f"--src={tree}", f"--out={out}", *_cli_flags(), "--resume")
    stdout, stderr = resumed.stdout, resumed.stderr
    assert resumed.returncode == 0, stderr
    assert processes.our_lines(stderr) == [
        f"--resume: kept {len(finished)} of {NUM_SHARDS} shards of {scratch.name} (checked); converting the rest"
    ]
    assert stdout.startswith(f"Wrote 120 images to {out}")
    assert files(out) == reference  # shards, manifest and TFDS metadata, byte for byte
    assert sorted(p.name for p in out.iterdir()) == sorted(reference)  # no scratch folder left
    for name, identity in finished.items():
        assert _identity(out / name) == identity, f"{name} was written again"



@pytest.mark.parametrize("change", ["flag", "file"])
def test_resume_after_a_change_converts_from_the_start(tree, killed, tmp_path, capsys, change):
    *_, copy = killed
    out = _out_with(copy, tmp_path)
    flags = dict(FLAGS)
    if change == "flag":
        flags["seed"] = 1
        why = "was started with --seed=0 (now 1)"
    else:
        touched = tree / "cats" / "cats.000.jpg"
        times = touched.stat()
        os.utime(touched, ns=(times.st_atime_ns, times.st_mtime_ns + 10**9))
        why = "was started on other source files"
    try:
        summary = convert(tree, out, resume=True, **flags)
    finally:
        if change == "file":
            os.utime(touched, ns=(times.st_atime_ns, times.st_mtime_ns))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"--resume: {copy.name} {why}")
    assert lines[0].endswith(": converting from the start")
    assert lines[1].startswith(f"removed 1 scratch folder(s) that interrupted conversions left in {out}")
    assert summary.num_images == 120
    assert not _scratch_folders(out)


def test_a_damaged_or_unrecorded_shard_is_written_again(tree, killed, reference, tmp_path, capsys):
    *_, finished, copy = killed
    out = _out_with(copy, tmp_path)
    scratch = out / copy.name
    damaged, unrecorded, *kept = sorted(finished)
    data = bytearray((scratch / damaged).read_bytes())
    data[len(data) // 2] ^= 0xFF  # a record's CRC fails, its size does not change
    (scratch / damaged).write_bytes(bytes(data))
    (scratch / resume_lib.BOOKKEEPING / f"{unrecorded}.json").unlink()
    identities = {name: _identity(scratch / name) for name in kept}

    convert(tree, out, resume=True, **FLAGS)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"--resume: kept {len(kept)} of {NUM_SHARDS} shards of {copy.name}")
    assert files(out) == reference
    assert {name: _identity(out / name) for name in kept} == identities


def test_resume_with_nothing_to_resume_converts_and_says_so(tree, reference, tmp_path, capsys):
    out = tmp_path / "records"
    convert(tree, out, resume=True, **FLAGS)
    assert capsys.readouterr().err.splitlines() == [
        f"--resume: no interrupted conversion in {out}: converting from the start"
    ]
    assert files(out) == reference


def test_resume_is_refused_with_the_beam_runner(tree, tmp_path):
    with pytest.raises(conversion.ConversionError, match="--resume is not supported with --runner=beam"):
        convert(tree, tmp_path / "records", resume=True, runner="beam")
    with pytest.raises(conversion.ConversionError, match="--runner must be local or beam, got 'spark'"):
        convert(tree, tmp_path / "records", runner="spark")
    assert not (tmp_path / "records").exists()


# convert.py that SIGKILLs itself (by its own PID) at the swap's KILL_AT-th move:
# a point a kill from outside cannot aim at (the swap takes milliseconds).
_KILLED_IN_THE_SWAP = textwrap.dedent(
    """
    import os, runpy, signal, sys
    from pipeline import fileio

    real_replace, renames = fileio.replace, []

    def replace(src, dst):
        if os.path.dirname(src) != os.path.dirname(dst):  # a move into --out, not a worker's part file
            renames.append(dst)
        if len(renames) == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    fileio.replace = replace
    sys.argv[0] = "convert.py"
    runpy.run_path("convert.py", run_name="__main__")
    """
)


def test_a_kill_inside_the_swap_is_finished_by_the_next_run(tree, reference, tmp_path):
    out, driver = tmp_path / "records", tmp_path / "killed_in_the_swap.py"
    driver.write_text(_KILLED_IN_THE_SWAP)
    kill_at = 5  # 4 files of the new set are in --out; the manifest, which comes last, is not
    killed = processes.run(driver, f"--src={tree}", f"--out={out}", *_cli_flags(),
                           environment=processes.env(KILL_AT=str(kill_at)))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (scratch,) = _scratch_folders(out)
    moved = sorted(name for name in os.listdir(out) if name != scratch.name)
    assert len(moved) == kill_at - 1 and "manifest.json" not in moved  # readers refuse the folder

    again = cli.run(CONVERT, f"--src={tree}", f"--out={out}", *_cli_flags())  # the same command
    assert again.returncode == 0, again.stderr
    assert processes.our_lines(again.stderr) == [
        f"finished the swap an interrupted conversion began: {out} holds its records, whole"
    ]
    assert files(out) == reference
    assert sorted(p.name for p in out.iterdir()) == sorted(reference)
