"""Records and runs on a remote filesystem, through TensorFlow's in-memory `ram://`.

The reader and the trainer go through tf.io.gfile, so `--records` and
`--model_dir` may be `gs://...`; `ram://` stands in for it here, with the
local disk untouched. (The converter still needs a local `--src` and `--out`.)
"""

from __future__ import annotations

import json
import os
import uuid

import tensorflow as tf

from support.records import sample_records
from pipeline import schema
from pipeline.reader import dataset
from model import run_config
from model import training


def _copy_to_ram(local: str) -> str:
    remote = f"ram://{uuid.uuid4().hex}/records"
    tf.io.gfile.makedirs(remote)
    for name in tf.io.gfile.listdir(local):
        tf.io.gfile.copy(os.path.join(local, name), os.path.join(remote, name))
    return remote


def test_records_read_and_a_run_trains_and_resumes_on_ram(tmp_path):
    local = sample_records(tmp_path / "local", {"train": 8, "validation": 3}, seed=4)
    records = _copy_to_ram(str(local))
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(os.getcwd()))

    manifest = schema.read_manifest(records)
    config = dataset.InputConfig(image_size=(32, 32), batch_size=4)
    assert sum(int(x.shape[0]) for x, _ in dataset.eval_dataset(records, "validation", config)) == 6
    assert sum(int(x.shape[0]) for x, _ in dataset.train_dataset(records, config)) == 16
    assert manifest.splits["train"].num_examples == 16

    model_dir = records.replace("/records", "/run")
    run = run_config.TrainConfig(records=records, model_dir=model_dir, epochs=1, batch_size=4, image_size=32, verbose=0,
                                 export=False)
    training.train_and_evaluate(run)
    again = training.train_and_evaluate(run_config.TrainConfig(**{**run.__dict__, "epochs": 2}))
    assert again.epochs_done == 2
    history = json.loads(tf.io.gfile.GFile(f"{model_dir}/history.json").read())
    assert [entry["epoch"] for entry in history] == [0, 1]
    for name in ("model.keras", "results.json", "run.json", "training_curves.png", "checkpoints/epoch_002.keras"):
        assert tf.io.gfile.exists(f"{model_dir}/{name}"), name
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(os.getcwd()))) == before  # nothing written locally
