"""convert.py as a user runs it, under faults: bad flags, odd trees, Ctrl-C, kill -9.

Bad flags and odd trees run convert.py's main in this process. Each
interrupted case starts `python convert.py` as a process of its own session,
acts on it by its PID (or its process group) at a point it reaches on disk,
and checks what is left in --out.
"""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from PIL import Image

from support import processes
from support.cli import cases as cli_cases
from support.images import make_image_tree
from support.records import convert, files, read_records
from pipeline import schema
from pipeline.converter import out_dir
from pipeline.converter.commands import CONVERT

# Shards per split in the fault runs: a shard every few dozen images.
NUM_SHARDS = 40


def _scratch_folders(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    return [p for p in out.iterdir() if p.name.startswith(out_dir.SCRATCH_PREFIX)]


def _scratch_shards(out: Path) -> int:
    """Shard files in the scratch folders of `out`; 0 while there are none."""
    try:
        return sum(len([n for n in os.listdir(p) if ".tfrecord-" in n]) for p in _scratch_folders(out))
    except FileNotFoundError:  # removed as we looked: the run is ending
        return 0


# --------------------------------------------------------------------------
# Runs that end on their own, in this process.


def _odd_tree(root: Path) -> tuple[Path, dict[str, str]]:
    """A tree with a FIFO, a device link, a loop, links and oversize files.

    Returns: (src, path relative to src -> skip reason).
    """
    tree = make_image_tree(root / "odd", "flat", {"cats": 3, "dogs": 3}, [(16, 16), (16, 24)])
    outside = make_image_tree(root / "elsewhere", "flat", {"birds": 1}, (16, 16))
    cats, dogs = tree.root / "cats", tree.root / "dogs"
    os.mkfifo(cats / "pipe.jpg")  # hung the converter
    os.symlink("/dev/zero", cats / "zero.jpg")  # was read until memory ran out
    os.symlink(".", cats / "loop")
    os.symlink("gone.jpg", dogs / "dangling.jpg")
    os.symlink(outside.images[0].path, dogs / "bird.jpg")  # used: --follow_external_links
    with open(dogs / "big.jpg", "wb") as f:
        f.truncate(2 * 2**20)  # sparse, over --max_file_mb=1
    return tree.root, {
        "cats/pipe.jpg": "not a regular file (fifo)",
        "cats/zero.jpg": "not a regular file (character device)",
        "cats/loop": "symlink loop",
        "dogs/dangling.jpg": "broken symlink",
        "dogs/big.jpg": "larger than --max_file_mb=1 (2 MiB)",
        # 16x24 images (every second one) are over --max_pixels=300.
        "cats/cats.001.jpg": "24x16 pixels, over --max_pixels=300",
        "dogs/dogs.000.jpg": "24x16 pixels, over --max_pixels=300",
        "dogs/dogs.002.jpg": "24x16 pixels, over --max_pixels=300",
    }


BAD_FLAGS = ["--image_size=0", "--shard_mb=0", "--workers=-1", "--shard_mb=-5",
             "--validation_fraction=1", "--max_pixels=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> (returncode, stdout, stderr); also "odd_src" and "odd_reasons"."""
    root = tmp_path_factory.mktemp("fault_cli")
    good = make_image_tree(root / "good", "flat", {"cats": 2, "dogs": 2}, (16, 16)).root
    odd_src, odd_reasons = _odd_tree(root)
    commands = {flag: [f"--src={good}", f"--out={root / 'never'}", flag] for flag in BAD_FLAGS}
    commands["odd"] = [
        f"--src={odd_src}", f"--out={root / 'odd_records'}", "--workers=1", "--num_shards=1",
        "--follow_external_links", "--max_file_mb=1", "--max_pixels=300",
    ]
    commands["all_skipped"] = [f"--src={good}", f"--out={root / 'none'}", "--workers=1", "--max_pixels=100"]
    results = {"root": root, "odd_reasons": odd_reasons, "odd_src": odd_src, "good": good}
    for name, done in cli_cases(CONVERT, commands).items():
        results[name] = (done.returncode, done.stdout, done.stderr)
    return results


@pytest.mark.parametrize("flag", BAD_FLAGS)
def test_a_bad_flag_value_is_one_line_and_exit_1(runs, flag):
    returncode, stdout, stderr = runs[flag]
    assert returncode == 1, stderr
    lines = processes.our_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"convert.py: error: flag {flag.split('=')[0]}="), lines
    assert "Traceback" not in stderr
    assert not stdout
    assert not (runs["root"] / "never").exists()


def test_an_odd_tree_converts_with_every_skip_and_its_reason(runs):
    returncode, stdout, stderr = runs["odd"]
    assert returncode == 0, stderr
    src, out = runs["odd_src"], runs["root"] / "odd_records"
    manifest = schema.read_manifest(str(out))
    skipped = {os.path.relpath(s.path, src): s.reason for s in manifest.skipped}
    assert skipped == runs["odd_reasons"]
    for name, reason in skipped.items():
        assert f"{src / name}: {reason}" in stdout
    records = sorted(r[schema.FILENAME_KEY] for r in read_records(out, "train"))
    assert records == ["cats/cats.000.jpg", "cats/cats.002.jpg", "dogs/bird.jpg", "dogs/dogs.001.jpg"]


def test_a_tree_whose_every_file_is_skipped_says_why(runs):
    returncode, _, stderr = runs["all_skipped"]
    assert returncode == 1 and processes.our_lines(stderr)[-1].startswith(
        f"convert.py: error: no file under {runs['good']} could be converted: 4 skipped, e.g. {runs['good']}/")
    assert processes.our_lines(stderr)[-1].endswith(": 16x16 pixels, over --max_pixels=100")
    assert not (runs["root"] / "none").exists()


# --------------------------------------------------------------------------
# Interrupted runs.


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory) -> Path:
    """pets/{cats,dogs}: 1,200 distinct files, each a flat 1000x1000 JPEG.

    Big, not tiny, so that a conversion takes seconds: long enough to be
    caught at a point (a scratch folder, some shards) on any machine.
    """
    root = tmp_path_factory.mktemp("big") / "pets"
    buffer = io.BytesIO()
    Image.new("RGB", (1000, 1000), (120, 120, 120)).save(buffer, format="JPEG", quality=95)
    for class_name in ("cats", "dogs"):
        (root / class_name).mkdir(parents=True)
        for i in range(600):
            (root / class_name / f"{i:04d}.jpg").write_bytes(buffer.getvalue())
    return root


def _big_run(big_tree: Path, out: Path, *flags: str) -> processes.Process:
    """`python convert.py` of `big_tree` in a session of its own."""
    return processes.start(
        "convert.py", f"--src={big_tree}", f"--out={out}", f"--num_shards={NUM_SHARDS}", "--image_size=32", *flags
    )


def test_ctrl_c_prints_one_line_and_keeps_the_finished_shards_for_resume(big_tree, tmp_path, capsys):
    out = tmp_path / "records"
    proc = _big_run(big_tree, out, "--workers=2")
    processes.wait_until(proc, lambda: _scratch_shards(out) >= 1, "its first shard")
    # As Ctrl-C in a terminal does: to the process group, the decoders too.
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 130, stderr
    (scratch,) = _scratch_folders(out)
    assert processes.our_lines(stderr) == [
        f"convert.py: interrupted; the finished shards are kept in {scratch}: the same command with --resume "
        "continues, one without it removes them"], stderr
    assert "Traceback" not in stderr and _scratch_shards(out) >= 1
    assert os.listdir(out) == [scratch.name]  # no manifest, no shard outside it
    small = make_image_tree(tmp_path / "small" / "pets", "flat", {"cats": 3, "dogs": 3}, (16, 16))
    capsys.readouterr()
    convert(small.root, out, num_shards=1)  # (--resume from a dead run's scratch: test_convert_resume.py)
    assert capsys.readouterr().err.startswith("removed 1 scratch folder") and not _scratch_folders(out)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_kill_9_ends_the_decoders_too(big_tree, tmp_path):
    """The decoders write shards themselves: killed with the converter, none goes on writing one."""
    out = tmp_path / "records"
    proc = _big_run(big_tree, out, "--workers=2")
    writing = lambda: any(name.endswith(".part") for p in _scratch_folders(out) for name in os.listdir(p))  # noqa: E731
    processes.wait_until(proc, writing, "a decoder writing a shard")
    decoders = [child.pid for child in psutil.Process(proc.pid).children()]
    assert len(decoders) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    (scratch,) = _scratch_folders(out)
    left = _sizes(scratch)  # a decoder left running would finish its shard and rename it
    deadline = time.monotonic() + processes.PATIENCE
    while any(_alive(pid) for pid in decoders) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(_alive(pid) for pid in decoders)
    assert _sizes(scratch) == left and any(name.endswith(".part") for name in left)


def _sizes(folder: Path) -> dict[str, int]:
    return {name: os.path.getsize(folder / name) for name in os.listdir(folder)}


# Where a kill -9 lands: a point the run reaches on disk.
KILL_POINTS = {
    "scratch_made": lambda out: bool(_scratch_folders(out)),
    "shards_written": lambda out: _scratch_shards(out) >= 3,
}


def test_kill_9_keeps_the_old_records_whole_and_a_rerun_cleans_up(big_tree, tmp_path, capsys):
    # Old records of the same name and shard count: the new shards would
    # replace them file for file, so a mix would show.
    old_tree = make_image_tree(tmp_path / "old" / "pets", "flat", {"cats": 20, "dogs": 20}, (16, 16))
    outs, procs = {}, {}
    for point in KILL_POINTS:
        out = tmp_path / point
        convert(old_tree.root, out, num_shards=NUM_SHARDS)
        outs[point] = (out, files(out))
        procs[point] = _big_run(big_tree, out, "--overwrite", "--workers=1")

    for point, reached in KILL_POINTS.items():
        (out, old), proc = outs[point], procs[point]
        processes.wait_until(proc, lambda: reached(out), point)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        assert files(out) == old, point  # the old manifest, TFDS files and shards, byte for byte
        assert len(_scratch_folders(out)) == 1, point

    for point, (out, old) in outs.items():
        capsys.readouterr()
        summary = convert(old_tree.root, out, overwrite=True, num_shards=NUM_SHARDS, image_size=(8, 8))
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("removed 1 scratch folder"), lines
        assert not _scratch_folders(out)
        # The complete new set.
        assert schema.read_manifest(str(out)) == summary.manifest
        shards = {s.filename: s.num_bytes for s in summary.manifest.splits["train"].shards}
        assert {name: len(data) for name, data in files(out).items() if ".tfrecord-" in name} == shards
        assert len(read_records(out, "train")) == 40
