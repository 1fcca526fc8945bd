"""Trains the CNN on a records folder: the library behind train.py.

    model_dir/
      model.keras            # the trained model (model.h5 too, on request)
      history.json           # one entry per epoch, kept across resumes
      training_curves.png    # accuracy and loss, training and validation  } not with
      input_batch.png        # a 4x5 grid of one training batch            } pictures=False
      augmented_variants.png # 20 augmentations of one training image      }
      results.json           # test-split metrics and the last epoch's logs
      checkpoints/epoch_001.keras ...
      run.json               # the settings that define the run (model/run_dir.py)
      backup/                # the last complete epoch's state: a rerun resumes here
      logs/                  # TensorBoard

A rerun with the same model_dir resumes at the batch its backup holds (see
model/run_dir.py); one with other settings is refused; one while another
process trains in it, too (`fileio.held`). The records are held and
checked while they are read (`guard`): a run never trains on, nor reports
from, records replaced under it.
"""

from __future__ import annotations

import dataclasses
import threading

import keras
import psutil
import tensorflow as tf
from absl import logging

from pipeline import fileio
from pipeline import schema
from pipeline.reader import augment
from pipeline.reader import dataset
from pipeline.reader import guard
from pipeline.reader import service
from model import callbacks
from model import cnn
from model import evaluation
from model import hardware
from model import inference
from model import pictures
from model import run_config
from model import run_dir

# The cache may take this share of the memory available at start; beyond it
# the run streams from the records (a cache that does not fit kills the run).
CACHE_MEMORY_SHARE = 0.5
def run_settings(config: run_config.TrainConfig, manifest: schema.Manifest) -> dict:
    """The settings that define a run: run_config.RUN_DEFINING_FIELDS, the records' identity, classes
    and stored size (predict.py and the export resize a photo as the records were)."""
    settings = {name: getattr(config, name) for name in run_config.RUN_DEFINING_FIELDS}
    settings["augment_on"] = config.augment_on.value
    return {**settings, run_dir.RECORDS_KEY: guard.fingerprint(manifest), "class_names": list(manifest.class_names),
            run_dir.STORED_SIZE_KEY: manifest.stored_size}


def cache_fits(num_images: int, image_size: int, available_bytes: int) -> bool:
    """Whether `num_images` decoded uint8 images fit in CACHE_MEMORY_SHARE of the memory."""
    return num_images * image_size * image_size * 3 <= CACHE_MEMORY_SHARE * available_bytes


def decide_cache(
    config: run_config.TrainConfig, manifest: schema.Manifest, available_bytes: int | None = None
) -> tuple[bool, str]:
    """Whether to cache the train and validation images: asked, and they fit.

    Returns:
      (cache on, the reason in words).
    """
    if not config.cache:
        return False, "off (--nocache): every epoch decodes the records"
    num_images = sum(split.num_examples for name, split in manifest.splits.items() if name != "test")
    available = psutil.virtual_memory().available if available_bytes is None else available_bytes
    sizes = f"{num_images} decoded images take {num_images * config.image_size**2 * 3 / 1e6:,.0f} MB"
    if cache_fits(num_images, config.image_size, available):
        return True, f"on: {sizes} of {available / 1e6:,.0f} MB available"
    return False, (
        f"off: {sizes}, more than {CACHE_MEMORY_SHARE:.0%} of the {available / 1e6:,.0f} MB "
        "available; streaming from the records instead"
    )


def make_strategy(config: run_config.TrainConfig) -> tf.distribute.Strategy:
    """The tf.distribute strategy of a run: the default one, or mirrored over
    the local GPUs (the logical CPU devices where there is no GPU)."""
    if config.strategy is run_config.Strategy.DEFAULT:
        return tf.distribute.get_strategy()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])


def describe_setup(
    config: run_config.TrainConfig, found: hardware.Hardware, strategy: tf.distribute.Strategy, cache_reason: str,
    stored_size: tuple[int, int] | None = None,
) -> dict[str, str]:
    """What the run uses, as logged at start and kept in results.json (`stored_size`: the records')."""
    if not config.augment:
        augmentation = "off"
    elif config.augment_on is run_config.AugmentOn.DEVICE:
        augmentation = "device (the model's first layer)"
    else:
        augmentation = "host (tf.data, OpenCV warp)"
    # Said only where the records are resampled again: a size the user may not have meant.
    resized = {} if stored_size in (None, (config.image_size,) * 2) else {"images": (
        f"records stored at {stored_size[0]}x{stored_size[1]}, "
        f"resized to {config.image_size}x{config.image_size} for the model")}
    return {
        **resized,
        "devices": found.describe(),
        "strategy": (
            f"{config.strategy.value}: {strategy.num_replicas_in_sync} replica(s), "
            f"global batch {config.batch_size}"
        ),
        "precision": keras.mixed_precision.global_policy().name,
        "xla": "on" if config.jit_compile else "off",
        "augmentation": augmentation,
        "cache": cache_reason,
        "input": (
            f"tf.data service at {config.data_service} (dynamic sharding: each example once per epoch)"
            if config.data_service else "tf.data in this process"
        ),
    }


def input_configs(
    config: run_config.TrainConfig, num_classes: int, cache: bool | None = None
) -> tuple[dataset.InputConfig, dataset.InputConfig]:
    """The training and evaluation InputConfigs of a run (`cache`: default config.cache).

    Training batches made on tf.data service workers are warped with
    TensorFlow ops (the only ones a worker can run) and not cached (each
    epoch hands the shards out to the workers anew).
    """
    config = run_config.resolve_augment_on(config, hardware.detect())
    host = config.augment and config.augment_on is run_config.AugmentOn.HOST
    evaluation = dataset.InputConfig(
        image_size=(config.image_size, config.image_size),
        batch_size=config.batch_size,
        class_mode="binary" if num_classes == 2 else "categorical",
        cache=config.cache if cache is None else cache,
        seed=config.seed,
    )
    train = dataclasses.replace(evaluation, augmentation=augment.NOTEBOOK_AUGMENTATION if host else None)
    if config.data_service:
        train = dataclasses.replace(train, cache=False, host_warp=augment.HostWarp.TENSORFLOW, distributed=True)
    return train, evaluation


def training_input(
    config: run_config.TrainConfig, manifest: schema.Manifest, cache: bool, position: dataset.EpochPosition | None
) -> tf.data.Dataset:
    """The batches a run trains on: made here, each epoch at `position`, or by the
    tf.data service's workers, an epoch per pass."""
    train_config, _ = input_configs(config, manifest.num_classes, cache)
    if config.data_service:
        on_workers = dataset.train_dataset(config.records, train_config)
        address = service.Address.parse(config.data_service)
        return dataset.on_trainer(service.distribute(on_workers, address), train_config.batch_size)
    return dataset.train_dataset(config.records, train_config, position=position,
                                 steps_per_epoch=config.steps_per_epoch)


def steps_per_epoch(config: run_config.TrainConfig, manifest: schema.Manifest) -> int:
    """Training batches per epoch: --steps_per_epoch, or one pass over the train split."""
    train_config, _ = input_configs(config, manifest.num_classes)
    return config.steps_per_epoch or dataset.num_batches(manifest, "train", train_config)


def build_model(config: run_config.TrainConfig, num_classes: int) -> keras.Model:
    """The compiled CNN of a run (sets the global precision policy first)."""
    if config.mixed_precision:
        gpu = bool(tf.config.list_physical_devices("GPU"))
        keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")
    else:
        keras.mixed_precision.set_global_policy("float32")
    config = run_config.resolve_augment_on(config, hardware.detect())
    device = config.augment and config.augment_on is run_config.AugmentOn.DEVICE
    model = cnn.build_cnn(
        (config.image_size, config.image_size),
        num_classes,
        augment.NOTEBOOK_AUGMENTATION if device else None,
        seed=config.seed,
    )
    return cnn.compile_cnn(model, config.learning_rate, jit_compile=config.jit_compile)


def _callbacks(
    config: run_config.TrainConfig, train_ds: tf.data.Dataset, backup: run_dir.Backup
) -> list[keras.callbacks.Callback]:
    # The backup comes last: its commit says the epoch's history and checkpoint are written.
    # The records' check comes first: an epoch that read other records writes none of them.
    return [
        callbacks.RecordsUnchanged(backup.check),
        # With --data_service a probe of the input would start a new service job
        # (another distributed epoch) after every epoch: the training rate only.
        callbacks.EpochThroughput(config.batch_size, input_data=None if config.data_service else train_ds),
        callbacks.HistoryFile(
            config.path("history.json"), config.path("training_curves.png") if config.pictures else None
        ),
        run_dir.EpochCheckpoint(config.path("checkpoints")),
        keras.callbacks.TensorBoard(config.path("logs"), profile_batch=config.profile_batches or 0),
        backup,
    ]


def _check_records(config: run_config.TrainConfig, manifest: schema.Manifest) -> None:
    """Fails before any work what would otherwise fail mid-epoch: no train split, missing shards, no dispatcher."""
    manifest.split("train", config.records)
    schema.check_shard_files(config.records, manifest)
    if config.data_service:
        service.check_reachable(service.Address.parse(config.data_service))


def _finished_run(
    config: run_config.TrainConfig, manifest: schema.Manifest
) -> tuple[int, run_dir.TrainResult | None]:
    """(epochs the model_dir's backup holds, its result if the run is already finished).

    Refuses a model_dir that holds another run (run_dir.RunMismatchError).
    """
    run_dir.record_settings(config.model_dir, run_settings(config, manifest))
    done = run_dir.completed_epochs(config.path("backup"))
    if done >= config.epochs and tf.io.gfile.exists(config.path("results.json")):
        logging.info("%s already holds a finished run of %d epochs", config.model_dir, done)
        remedy = "delete it to evaluate the finished run again"
        result = fileio.read_state(config.path("results.json"), run_dir.TrainResult.from_json, remedy)
        return done, dataclasses.replace(result, already_complete=True)
    return done, None


def _fit(
    config: run_config.TrainConfig, records: guard.HeldRecords, model: keras.Model, cache: bool,
    eval_config: dataset.InputConfig, stop: threading.Event | None,
) -> None:
    """model.fit on the run's training input from its backup, validating on the validation split if any.

    A backup taken mid-epoch resumes in two fits: the rest of that epoch,
    then the epochs after it (Keras counts the same steps in every epoch of a fit).

    Raises:
      run_dir.Stopped: `stop` was set.
      guard.RecordsChangedError: the records were replaced; the last backup is of the run's own.
    """
    manifest = records.manifest
    resume = run_dir.restore(model, config.path("backup"))
    first_epoch, first_step = (resume.epoch, resume.step) if resume else (0, 0)
    if config.data_service:  # its workers make whole epochs: a mid-epoch backup resumes at the epoch
        first_step = 0
    if resume:
        logging.info("resuming from %s at epoch %d%s", config.path("backup"), first_epoch + 1,
                     f", after batch {first_step}" if first_step else "")
    position = None if config.data_service else dataset.EpochPosition(first_epoch, first_step)
    train_ds = training_input(config, manifest, cache, position)
    val_ds = None
    if "validation" in manifest.splits:
        val_ds = dataset.eval_dataset(config.records, "validation", eval_config)
        if config.validation_steps:
            val_ds = val_ds.repeat()
    backup = run_dir.Backup(config.path("backup"), config.backup_every_steps, stop,
                            resume if first_step else None, mid_epoch=not config.data_service,
                            check=lambda: records.check(_records_remedy(config)))
    fit = dict(
        validation_data=val_ds, validation_steps=config.validation_steps if val_ds is not None else None,
        callbacks=[*_callbacks(config, train_ds, backup), callbacks.FollowEpochs(position, first_epoch, first_step)],
        verbose=config.verbose, shuffle=False,  # the datasets shuffle themselves
    )
    steps = steps_per_epoch(config, manifest)
    if first_step and first_epoch < config.epochs:
        model.fit(train_ds, initial_epoch=first_epoch, epochs=first_epoch + 1, steps_per_epoch=steps - first_step, **fit)
        first_epoch += 1
    if stop is None or not stop.is_set():
        if position is not None:  # one pass per epoch, of the stated length
            train_ds = train_ds.apply(tf.data.experimental.assert_cardinality(steps))
        else:
            # The service's epochs back to back, `steps` batches each: Keras cut
            # an epoch longer than its first, and one short (a worker lost) now
            # shifts the next instead.
            train_ds = train_ds.repeat()
        model.fit(train_ds, initial_epoch=first_epoch, epochs=config.epochs,
                  steps_per_epoch=None if position is not None else steps, **fit)
    if stop is not None and stop.is_set():  # stopped at an epoch's end, its backup taken
        raise run_dir.Stopped(run_dir.completed_epochs(config.path("backup")), 0, backed_up=True)


def _records_remedy(config: run_config.TrainConfig) -> str:
    return (f"nothing was reported from other records, and the last backup in {config.path('backup')} is of "
            "the run's own: put them back and run the same command to resume, or train on the new ones "
            "into another --model_dir")


def _save_results(
    config: run_config.TrainConfig, records: guard.HeldRecords, model: keras.Model, setup: dict[str, str],
    eval_config: dataset.InputConfig,
) -> run_dir.TrainResult:
    """Saves the model, evaluates the test split if any, and writes results.json."""
    manifest = records.manifest
    files = {"model": config.path("model.keras")}
    if config.save_h5:
        files["model_h5"] = config.path("model.h5")
    for path in files.values():
        run_dir.save_model(model, path)
    history = callbacks.read_history(config.path("history.json"))
    test = None
    if "test" in manifest.splits:
        report = evaluation.evaluate_split(model, config.records, "test", eval_config, manifest.class_names)
        records.check(_records_remedy(config))  # the report is of the run's own records, or none
        evaluation.write_report(report, config.path("eval_test"), "test", pictures=config.pictures)
        test = {"accuracy": report.accuracy, "loss": report.loss}
        logging.info("test: %s", test)
    run = inference.TrainedRun(config.model_dir, manifest.class_names, (config.image_size,) * 2, config.records,
                               manifest.stored_size)
    if config.export:
        files["export"] = inference.export_model(run, model)
    result = run_dir.TrainResult(len(history), history[-1] if history else None, files, setup, test,
                         records=fileio.absolute(config.records))  # evaluate.py may run from elsewhere
    fileio.write_json(config.path("results.json"), result.to_json())
    return result


def train_and_evaluate(
    config: run_config.TrainConfig, stop: threading.Event | None = None
) -> run_dir.TrainResult:
    """Trains (or resumes training), saves everything listed in the module doc.

    `stop`, once set (train.py sets it on SIGTERM and Ctrl-C), ends training
    at the next batch, with a backup of that batch: run_dir.Stopped.

    The records are held shared while the run reads them (a conversion into
    them is refused), and checked against the manifest it started with at
    each epoch's start and end, before each backup and after the test split's
    evaluation (`guard.HeldRecords`).

    Raises:
      ValueError: no records, records without a train split, (as
        run_dir.RunMismatchError) a model_dir that holds another run, (as
        fileio.LockedError) records being converted or a model_dir in use, or
        (as guard.RecordsChangedError) records replaced during the run.
      FileNotFoundError: the records folder has no manifest.
    """
    if not config.records:
        raise ValueError("--records is required: a folder written by convert.py")
    remedy = "wait for that run to end, or pass another --model_dir"
    policy = keras.mixed_precision.global_policy()
    try:
        with guard.reading(config.records) as records:
            _check_records(config, records.manifest)
            tf.io.gfile.makedirs(config.model_dir)
            with fileio.held(config.model_dir, remedy):
                return _train(config, records, stop)
    finally:  # a run sets the global precision policy; its caller gets its own back
        keras.mixed_precision.set_global_policy(policy)


def _train(
    config: run_config.TrainConfig, records: guard.HeldRecords, stop: threading.Event | None
) -> run_dir.TrainResult:
    """train_and_evaluate, with the records and the model_dir held."""
    manifest = records.manifest
    found = hardware.detect()
    config = run_config.resolve_augment_on(config, found)
    done, finished = _finished_run(config, manifest)
    if finished:
        return finished
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    cache, cache_reason = decide_cache(config, manifest)
    _, eval_config = input_configs(config, manifest.num_classes, cache)
    strategy = make_strategy(config)
    with strategy.scope():
        model = build_model(config, manifest.num_classes)
    setup = describe_setup(config, found, strategy, cache_reason, manifest.stored_size)
    logging.info("setup:\n%s", "\n".join(f"  {key:<13} {value}" for key, value in setup.items()))
    for warning in hardware.cpu_only_warnings(found, config.mixed_precision, config.jit_compile):
        logging.warning("%s", warning)
    # A resumed run has the same settings (record_settings refused any other),
    # so the pictures its first run drew still hold.
    if config.pictures and (
        done == 0 or not all(tf.io.gfile.exists(config.path(name)) for name in pictures.INPUT_PICTURES)
    ):
        pictures.save_input_pictures(
            config.model_dir, config.records, manifest, *input_configs(config, manifest.num_classes), config.seed
        )
    _fit(config, records, model, cache, eval_config, stop)
    return _save_results(config, records, model, setup, eval_config)
