"""The embedded sample: deterministic, in the users' layout, varied sizes."""

import hashlib
from pathlib import Path

from PIL import Image

from pipeline.converter import sample_data


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.jpg"))
    }


def test_sample_layout_and_determinism(tmp_path):
    counts = {"train": 3, "validation": 2, "test": 1}
    written = sample_data.write_sample(str(tmp_path / "a"), counts, seed=5)
    sample_data.write_sample(str(tmp_path / "b"), counts, seed=5)
    sample_data.write_sample(str(tmp_path / "c"), counts, seed=6)

    assert written == 2 * (3 + 2 + 1)
    first = _digest(tmp_path / "a")
    assert first == _digest(tmp_path / "b")
    assert first != _digest(tmp_path / "c")
    assert sorted({Path(name).parent.as_posix() for name in first}) == [
        "test/cats", "test/dogs", "train/cats", "train/dogs", "validation/cats", "validation/dogs",
    ]
    sizes = set()
    for path in (tmp_path / "a").rglob("*.jpg"):
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            sizes.add(image.size)
    assert len(sizes) > 1
