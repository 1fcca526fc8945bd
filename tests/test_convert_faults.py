"""convert.py as a user runs it, under faults: bad flags, odd trees, Ctrl-C, kill -9.

Each case starts `python convert.py` as a subprocess, acts on it by its PID
(or its own process group) at a point it reaches on disk, and checks what is
left in --out. Waits are bounded by PATIENCE, a guard against hanging, not a
measurement.
"""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import pytest
from PIL import Image

import warm
from conftest import convert, make_image_tree, read_records
from pipeline import schema
from pipeline.converter import out_dir

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
# TensorFlow's C++ start-up logging, which TF_CPP_MIN_LOG_LEVEL does not silence.
TF_LOG_PREFIXES = ("WARNING: All log messages", "I0000", "E0000", "W0000")
PATIENCE = 300  # seconds
# Shards per split in the fault runs: a shard every few dozen images.
NUM_SHARDS = 40


def _start(*args: str) -> warm.Process:
    """`python convert.py *args` in its own session, so its process group is its own."""
    return warm.start(["convert.py", *args], env=ENV, new_session=True)


def _our_lines(stderr: str) -> list[str]:
    return [
        line for line in stderr.splitlines() if line.strip() and not line.startswith(TF_LOG_PREFIXES)
    ]


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


def _wait_until(proc: warm.Process, condition, what: str) -> None:
    """Polls `condition` until it holds; fails if the run ends first or PATIENCE runs out."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"convert.py ended ({proc.returncode}) before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"convert.py did not reach {what}: {proc.communicate()}")
        time.sleep(0.01)


def _files(folder: Path) -> dict[str, bytes]:
    """name -> bytes of the files (not folders) in `folder`."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# --------------------------------------------------------------------------
# Runs that end on their own, started together.


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
        f"--src={odd_src}", f"--out={root / 'odd_records'}", "--workers=2", "--num_shards=1",
        "--follow_external_links", "--max_file_mb=1", "--max_pixels=300",
    ]
    procs = {name: _start(*args) for name, args in commands.items()}
    results = {"root": root, "odd_reasons": odd_reasons, "odd_src": odd_src}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=PATIENCE)
        results[name] = (proc.returncode, stdout, stderr)
    return results


@pytest.mark.parametrize("flag", BAD_FLAGS)
def test_a_bad_flag_value_is_one_line_and_exit_1(runs, flag):
    returncode, stdout, stderr = runs[flag]
    assert returncode == 1, stderr
    lines = _our_lines(stderr)
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


def _big_run(big_tree: Path, out: Path, *flags: str) -> warm.Process:
    return _start(
        f"--src={big_tree}", f"--out={out}", f"--num_shards={NUM_SHARDS}", "--image_size=32", *flags
    )


def test_ctrl_c_prints_one_line_and_leaves_nothing(big_tree, tmp_path):
    out = tmp_path / "records"
    proc = _big_run(big_tree, out, "--workers=2")
    _wait_until(proc, lambda: _scratch_shards(out) >= 1, "its first shard")
    # As Ctrl-C in a terminal does: to the process group, the decoders too.
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 130, stderr
    assert _our_lines(stderr) == ["convert.py: interrupted"], stderr
    assert "Traceback" not in stderr
    assert not out.exists()  # it made --out: no shards, no manifest, no scratch, no folder


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
        outs[point] = (out, _files(out))
        procs[point] = _big_run(big_tree, out, "--overwrite", "--workers=1")

    for point, reached in KILL_POINTS.items():
        (out, old), proc = outs[point], procs[point]
        _wait_until(proc, lambda: reached(out), point)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=PATIENCE)
        assert proc.returncode == -signal.SIGKILL
        assert _files(out) == old, point  # the old manifest, TFDS files and shards, byte for byte
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
        assert {name: len(data) for name, data in _files(out).items() if ".tfrecord-" in name} == shards
        assert len(read_records(out, "train")) == 40
