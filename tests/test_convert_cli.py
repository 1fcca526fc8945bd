"""convert.py's command line (pipeline.converter.commands), run in this process: one-line errors,
flags passed through, the same records as the library."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support.cli import cases as cli_cases
from support.images import add_bad_files, decode_jpeg, make_image_tree
from support.records import convert, partial_folders, read_records, shard_files
from pipeline import schema
from pipeline.converter.commands import CONVERT


def _cli_cases(root: Path) -> dict[str, tuple[list[str], Path | None]]:
    good = make_image_tree(root / "good_src", "split", {"train": {"cats": 3, "dogs": 3}}, (16, 16)).root
    empty = root / "empty_src"
    empty.mkdir()
    (empty / "readme.txt").write_text("no class folders here")
    no_images = root / "no_images_src"
    (no_images / "cats").mkdir(parents=True)
    (no_images / "dogs").mkdir()
    bad = make_image_tree(root / "bad_src", "flat", {"cats": 2, "dogs": 2}, (16, 16)).root
    add_bad_files(bad / "cats")
    existing = root / "existing"
    convert(good, existing, num_shards=1)

    def out(name):
        return root / "outs" / name

    return {
        "missing_src": ([f"--out={out('missing_src')}"], out("missing_src")),
        "no_class_folders": ([f"--src={empty}", f"--out={out('no_class_folders')}"], out("no_class_folders")),
        "no_images": ([f"--src={no_images}", f"--out={out('no_images')}"], out("no_images")),
        "bad_class": (
            [f"--src={good}", "--classes=cats,horses", f"--out={out('bad_class')}"],
            out("bad_class"),
        ),
        "existing": ([f"--src={good}", f"--out={existing}"], None),
        "strict": ([f"--src={bad}", "--strict", "--workers=1", f"--out={out('strict')}"], out("strict")),
        # Two workers: the decoding pool.
        "ok": (
            [f"--src={good}", "--classes=dogs,cats", "--image_size=20", "--workers=2", f"--out={out('ok')}"],
            out("ok"),
        ),
        # Bad files skipped, flags passed through, earlier records replaced. (Seed 0 deals the truncated
        # JPEG, whose header reads, to validation: in train it would leave cats none, as a user would see.)
        "ok_flat": (
            [
                f"--src={bad}", "--validation_fraction=0.5", "--seed=0", "--num_shards=2",
                "--workers=1", "--overwrite", f"--out={root / 'existing2'}",
            ],
            root / "existing2",
        ),
    }


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """name -> (returncode, stdout, stderr, out folder, src-tree root)."""
    root = tmp_path_factory.mktemp("cli")
    cases = _cli_cases(root)
    convert(root / "good_src", root / "existing2", num_shards=1)
    runs = cli_cases(CONVERT, {name: args for name, (args, _) in cases.items()})
    results = {}
    for name, done in runs.items():
        results[name] = (done.returncode, done.stdout, done.stderr, cases[name][1], root)
    return results


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("convert.py: error:")]
    assert len(errors) == 1, stderr
    assert lines[-1] == errors[0], stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing_src", "--src is required"),
        ("no_class_folders", "no class folders"),
        ("no_images", "no files"),
        ("bad_class", "horses"),
        ("existing", "--overwrite"),
        ("strict", r"--strict: .*cats.*\.jpg"),
    ],
)
def test_cli_errors_are_one_line_with_nonzero_exit(cli, case, match):
    returncode, stdout, stderr, out, root = cli[case]
    assert returncode != 0
    assert re.search(match, _error_line(stderr)), stderr
    assert "Wrote" not in stdout
    if out is not None:
        assert not out.exists()
        if out.parent.exists():
            assert not partial_folders(out.parent)
    assert not partial_folders(root)


def test_cli_existing_output_is_untouched(cli):
    *_, root = cli["existing"]
    manifest = schema.read_manifest(str(root / "existing"))
    assert manifest.splits["train"].num_examples == 6
    assert len(shard_files(root / "existing")) == 1


def test_cli_classes_and_image_size(cli, tmp_path):
    returncode, stdout, stderr, out, root = cli["ok"]
    assert returncode == 0, stderr
    assert stdout.startswith("Wrote 6 images to ")
    manifest = schema.read_manifest(str(out))
    assert manifest.class_names == ("dogs", "cats")
    assert manifest.stored_size == (20, 20)
    records = read_records(out, "train")
    assert len(records) == 6
    for record in records:
        assert record[schema.LABEL_KEY] == {"dogs": 0, "cats": 1}[record["class_name"]]
        assert (record[schema.HEIGHT_KEY], record[schema.WIDTH_KEY]) == (20, 20)
        assert decode_jpeg(record[schema.IMAGE_KEY]).shape == (20, 20, 3)
    assert not partial_folders(out.parent)
    # The decoding pool (--workers=2) writes what one process writes.
    convert(root / "good_src", tmp_path / "serial", classes=["dogs", "cats"], image_size=(20, 20))
    serial = read_records(tmp_path / "serial", "train")
    assert [(r["shard"], r[schema.FILENAME_KEY], r[schema.IMAGE_KEY]) for r in records] == [
        (r["shard"], r[schema.FILENAME_KEY], r[schema.IMAGE_KEY]) for r in serial
    ]


def test_cli_skips_bad_files_passes_flags_and_overwrites(cli, tmp_path):
    returncode, stdout, stderr, out, root = cli["ok_flat"]
    assert returncode == 0, stderr
    assert re.search(r"skipped\s+3 files", stdout)
    for name in ("empty.jpg", "truncated.jpg", "notes.jpg"):
        assert re.search(rf"{name}: \S", stdout), stdout
    manifest = schema.read_manifest(str(out))
    assert len(manifest.skipped) == 3
    assert manifest.class_names == ("cats", "dogs")
    # The earlier records (of good_src) are gone.
    assert shard_files(out) == sorted(
        s.filename for info in manifest.splits.values() for s in info.shards
    )
    assert all(name.startswith("bad_src-") for name in shard_files(out))
    # Same records as the library with the same arguments.
    library = convert(
        root / "bad_src", tmp_path / "records", validation_fraction=0.5, seed=0, num_shards=2
    )
    assert manifest.to_json()["splits"] == library.manifest.to_json()["splits"]
    assert set(manifest.splits) == {"train", "validation"}
    assert sum(info.num_examples for info in manifest.splits.values()) == 4
    for split in ("train", "validation"):
        assert [r[schema.FILENAME_KEY] for r in read_records(out, split)] == [
            r[schema.FILENAME_KEY] for r in read_records(tmp_path / "records", split)
        ]
