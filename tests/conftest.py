"""Fixtures only; what the tests share otherwise is in `support/` (see its __init__)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from support import images  # noqa: E402


@pytest.fixture(scope="session")
def split_tree(tmp_path_factory) -> images.ImageTree:
    """The standard split-layout tree: images.SPLIT_COUNTS at images.SPLIT_SIZES."""
    root = tmp_path_factory.mktemp("split_src") / "pets"
    return images.make_image_tree(root, "split", images.SPLIT_COUNTS, images.SPLIT_SIZES)


@pytest.fixture(scope="session")
def split_records(split_tree, tmp_path_factory):
    """(records_dir, summary) of `split_tree`, converted at the original sizes."""
    out = tmp_path_factory.mktemp("split_records") / "records"
    from support import records  # TensorFlow: imported in the workers, not in xdist's controller

    summary = records.convert(split_tree.root, out)
    return out, summary


@pytest.fixture(scope="session")
def finished_run(split_records, tmp_path_factory):
    """(train.py command line, model_dir) of a finished one-epoch run on `split_records`."""
    from model.commands import TRAIN

    records_dir, _ = split_records
    model_dir = tmp_path_factory.mktemp("finished") / "run"
    argv = ["train.py", f"--records={records_dir}", f"--model_dir={model_dir}", "--epochs=1",
            "--batch_size=6", "--image_size=32", "--nocache", "--verbose=0", "--steps_per_epoch=2", "--nopictures"]
    # Trained from the records' parent with a relative --records: the run must still find them from elsewhere.
    with contextlib.chdir(records_dir.parent):
        assert TRAIN.main([argv[0], f"--records={records_dir.name}", *argv[2:]]) == 0
    return argv, model_dir


@pytest.fixture
def run(finished_run, tmp_path):
    """A copy of `finished_run` to change: (its command line, pointing at the copy, the copy).

    The command line adds --noexport: the tests that continue the copy read no export.
    """
    argv, model_dir = finished_run
    copy = tmp_path / "run"
    shutil.copytree(model_dir, copy)
    return [*(arg.replace(str(model_dir), str(copy)) for arg in argv), "--noexport"], copy
