"""pipeline.converter.local: this machine's decoding pool, its bounded window and its shard pieces,
which write the bytes one process writes."""

from __future__ import annotations

from support.records import convert, files, shard_files
from pipeline.converter import local
from pipeline.converter import write


def test_the_last_shards_written_in_pieces_are_the_same_bytes(split_tree, tmp_path, monkeypatch):
    """9 shards for 2 workers: the last goes out as 2 pieces, joined into the same bytes."""
    whole = convert(split_tree.root, tmp_path / "whole", num_shards=3)
    joined, join_pieces = [], write.ShardWriter.join_pieces

    def recorded(writer, filename, pieces):
        joined.append((filename, len(pieces)))
        return join_pieces(writer, filename, pieces)

    monkeypatch.setattr(write.ShardWriter, "join_pieces", recorded)
    monkeypatch.setattr(local, "fork_pool", lambda workers: None)  # the pieces, in turn, in this process
    pieces = convert(split_tree.root, tmp_path / "pieces", num_shards=3, workers=2)
    assert joined == [(whole.manifest.splits["test"].shards[-1].filename, 2)]
    assert files(tmp_path / "pieces") == files(tmp_path / "whole")
    assert pieces.manifest == whole.manifest


def _square(x: int) -> int:
    return x * x


def test_the_decoding_pool_holds_a_bounded_number_of_images():
    """Pool.imap took every image at once and kept every result not yet written."""
    taken = []

    def images():
        for i in range(300):
            taken.append(i)
            yield i

    bound = (2 * local.CHUNKS_PER_WORKER + 1) * local.CHUNK
    with local.fork_pool(2) as pool:
        for written, result in enumerate(local.bounded_imap(pool, _square, 2, images())):
            assert result == written * written  # in order
            assert len(taken) - written <= bound, (len(taken), written)
    assert len(taken) == 300


def test_the_pool_and_one_process_write_the_same_shards(split_tree, split_records, tmp_path):
    records_dir, _ = split_records
    convert(split_tree.root, tmp_path / "pooled", workers=3)
    assert {name: (records_dir / name).read_bytes() for name in shard_files(records_dir)} == {
        name: (tmp_path / "pooled" / name).read_bytes() for name in shard_files(tmp_path / "pooled")
    }
