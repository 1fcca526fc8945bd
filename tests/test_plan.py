"""pipeline.converter.plan: how a split's images are laid out in shards (count, order, names)."""

from __future__ import annotations

from support.records import convert, read_records, shard_files
from pipeline.converter import plan


def test_every_shard_holds_both_classes(split_records):
    records_dir, _ = split_records
    records = read_records(records_dir, "train")
    by_shard: dict[str, set] = {}
    for record in records:
        by_shard.setdefault(record["shard"], set()).add(record["class_name"])
    assert len(by_shard) == plan.DEFAULT_MIN_SHARDS
    for shard, classes in by_shard.items():
        assert classes == {"cats", "dogs"}, shard


def test_explicit_num_shards_and_cap_at_the_image_count(split_tree, tmp_path):
    summary = convert(split_tree.root, tmp_path / "records", num_shards=3)
    assert len(summary.manifest.splits["train"].shards) == 3
    assert len(summary.manifest.splits["test"].shards) == 3
    summary = convert(split_tree.root, tmp_path / "more", num_shards=50)
    # No empty shard: at most one per image.
    assert len(summary.manifest.splits["test"].shards) == 4
    assert all(s.num_examples == 1 for s in summary.manifest.splits["test"].shards)
    assert shard_files(tmp_path / "more") == sorted(
        s.filename for info in summary.manifest.splits.values() for s in info.shards
    )


def test_shard_mb_sets_the_number_of_shards(split_tree, tmp_path):
    train_bytes = sum(im.path.stat().st_size for im in split_tree.split("train"))
    summary = convert(split_tree.root, tmp_path / "records", shard_mb=train_bytes / 10 / 2**20)
    assert len(summary.manifest.splits["train"].shards) >= 10
    assert summary.manifest.splits["train"].num_examples == 24
