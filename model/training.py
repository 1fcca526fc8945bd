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
from, records replaced under it. The run is worked out once, from the
manifest read as they are held: `run_plan.RunPlan`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from pipeline import fileio
from pipeline import schema
from pipeline.reader import augment
from pipeline.reader import guard
from pipeline.reader import shares
from model import backend
from model import callbacks
from model import cnn
from model import distribution
from model import evaluation
from model import hardware
from model import inference
from model import pictures
from model import run_config
from model import run_dir
from model import run_plan

def run_settings(config: run_config.TrainConfig, manifest: schema.Manifest) -> dict:
    """The settings that define a run: run_config.RUN_DEFINING_FIELDS, the records' identity, classes
    and stored size (predict.py and the export resize a photo as the records were)."""
    settings = {name: getattr(config, name) for name in run_config.RUN_DEFINING_FIELDS}
    settings["augment_on"] = config.augment_on.value
    return {**settings, run_dir.RECORDS_KEY: guard.fingerprint(manifest), "class_names": list(manifest.class_names),
            run_dir.STORED_SIZE_KEY: manifest.stored_size, run_dir.BACKEND_KEY: backend.name()}


def describe_setup(plan: run_plan.RunPlan) -> dict[str, str]:
    """What the run uses, as logged at start and kept in results.json."""
    config, stored_size = plan.config, plan.manifest.stored_size
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
    placement = plan.placement
    share = {}
    if placement.even_batches:  # said where an epoch leaves images out: a share's last smaller batch
        sizes = shares.share_sizes(plan.manifest, "train", placement.processes.count)
        used = plan.steps_per_epoch * plan.train_input.batch_size
        share = {"epoch": (f"{plan.steps_per_epoch} steps of {config.batch_size}: each process its own shards "
                           f"({', '.join(map(str, sizes))} images), {used} of them an epoch, drawn anew each epoch")}
    return {
        **resized,
        "backend": backend.describe(),
        "devices": plan.hardware.describe(),
        "processes": placement.processes.describe(),
        "strategy": placement.describe(config),
        **share,
        "precision": keras.mixed_precision.global_policy().name,
        "xla": "on" if _jit_compile(plan) else "off",
        "augmentation": augmentation,
        "cache": plan.cache_reason,
        "input": plan.source.describe(),
        # train.py's watchdog (model/commands.py): a lost worker or dispatcher ends the run, not a silent wait.
        **({"input bound": f"{config.input_timeout} s without a training batch ends the run (--input_timeout)"}
           if config.data_service else {}),
    }


def _jit_compile(plan: run_plan.RunPlan) -> bool:
    """XLA: asked for on TensorFlow; always on JAX, which runs steps eagerly otherwise, op by op."""
    return plan.config.jit_compile or plan.placement.jax


def build_model(plan: run_plan.RunPlan) -> keras.Model:
    """The compiled CNN of a run (sets the global precision policy first)."""
    config = plan.config
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16" if plan.hardware.gpus else "mixed_bfloat16")
    else:
        keras.mixed_precision.set_global_policy("float32")
    device = config.augment and config.augment_on is run_config.AugmentOn.DEVICE
    model = cnn.build_cnn(
        (config.image_size, config.image_size),
        plan.manifest.num_classes,
        augment.NOTEBOOK_AUGMENTATION if device else None,
        seed=config.seed,
    )
    # Evaluation batches padded to split evenly weigh their images: the metrics must read the weights.
    return cnn.compile_cnn(model, config.learning_rate, jit_compile=_jit_compile(plan),
                           weighted=plan.placement.even_batches)


def _callbacks(
    config: run_config.TrainConfig, backup: run_dir.Backup, writer: bool = True
) -> list[keras.callbacks.Callback]:
    """The callbacks of every fit of a run, but the throughput's (`_fit` puts it second); of a
    process that writes nothing (not process 0), the records' check alone."""
    # The backup comes last: its commit says the epoch's history and checkpoint are written.
    # The records' check comes first: an epoch that read other records writes none of them.
    if not writer:
        return [callbacks.RecordsUnchanged(backup.check)]
    return [
        callbacks.RecordsUnchanged(backup.check),
        callbacks.HistoryFile(
            config.path("history.json"), config.path("training_curves.png") if config.pictures else None
        ),
        run_dir.EpochCheckpoint(config.path("checkpoints")),
        keras.callbacks.TensorBoard(config.path("logs"), profile_batch=config.profile_batches or 0),
        backup,
    ]


def _check_records(plan: run_plan.RunPlan) -> None:
    """Fails before any work what would otherwise fail mid-epoch: no train split, missing shards, no dispatcher."""
    plan.manifest.split("train", plan.config.records)
    schema.check_shard_files(plan.config.records, plan.manifest)
    plan.source.check()


def _finished_run(plan: run_plan.RunPlan, settings: dict) -> tuple[int, run_dir.TrainResult | None]:
    """(epochs the model_dir's backup holds, its result if the run is already finished).

    Refuses a model_dir that holds another run (run_dir.RunMismatchError): process 0 checks.
    """
    config = plan.config
    if plan.placement.processes.writer:
        run_dir.record_settings(config.model_dir, settings)
    done = run_dir.completed_epochs(config.path("backup"))
    if done >= config.epochs and fileio.exists(config.path("results.json")):
        logging.info("%s already holds a finished run of %d epochs", config.model_dir, done)
        remedy = "delete it to evaluate the finished run again"
        result = fileio.read_state(config.path("results.json"), run_dir.TrainResult.from_json, remedy)
        return done, dataclasses.replace(result, already_complete=True)
    return done, None


def _fit(
    plan: run_plan.RunPlan, records: guard.HeldRecords, model: keras.Model, stop: threading.Event | None,
    progress: tuple[keras.callbacks.Callback, ...] = (),
) -> None:
    """model.fit on the run's training batches from its backup, validating on the validation split if any.

    A backup taken mid-epoch resumes in two fits: the rest of that epoch,
    then the epochs after it (Keras counts the same steps in every epoch of a fit).

    Raises:
      run_dir.Stopped: `stop` was set.
      guard.RecordsChangedError: the records were replaced; the last backup is of the run's own.
    """
    config = plan.config
    resume = run_dir.restore(model, config.path("backup"))
    epoch, step = (resume.epoch, resume.step if plan.source.mid_epoch else 0) if resume else (0, 0)
    if resume:
        logging.info("resuming from %s at epoch %d%s", config.path("backup"), epoch + 1,
                     f", after batch {step}" if step else "")
    # Every process reads the backup in --model_dir: one folder all of them read.
    distribution.agree(plan.placement.processes, f"backups in {config.path('backup')} (epoch, batch)",
                       f"{epoch},{step}")
    batches = plan.batches(epoch, step)
    backup = run_dir.Backup(config.path("backup"), config.backup_every_steps, stop, resume if step else None,
                            mid_epoch=plan.source.mid_epoch, check=lambda: records.check(_records_remedy(config)))
    first, *others = [*_callbacks(config, backup, plan.placement.processes.writer), *batches.callbacks, *progress]
    val_ds = run_plan.validation_batches(plan)

    def fit(data: tf.data.Dataset, epochs: tuple[int, int], steps: int | None = None) -> None:
        throughput = callbacks.EpochThroughput(config.batch_size, input_data=data if batches.probe else None)
        model.fit(data, initial_epoch=epochs[0], epochs=epochs[1], steps_per_epoch=steps, validation_data=val_ds,
                  validation_steps=config.validation_steps if val_ds is not None else None,
                  callbacks=[first, throughput, *others], verbose=config.verbose, shuffle=False)

    passes = batches.passes
    if passes.rest_of_epoch is not None and epoch < config.epochs:
        fit(passes.rest_of_epoch, (epoch, epoch + 1))
        epoch += 1
    if stop is None or not stop.is_set():
        fit(passes.epochs, (epoch, config.epochs), passes.steps_per_epoch if passes.endless else None)
    if stop is not None and stop.is_set():  # stopped at an epoch's end, its backup taken
        raise run_dir.Stopped(run_dir.completed_epochs(config.path("backup")), 0, backed_up=True)


def _records_remedy(config: run_config.TrainConfig) -> str:
    return (f"nothing was reported from other records, and the last backup in {config.path('backup')} is of "
            "the run's own: put them back and run the same command to resume, or train on the new ones "
            "into another --model_dir")


def _save_results(
    plan: run_plan.RunPlan, records: guard.HeldRecords, model: keras.Model, setup: dict[str, str]
) -> run_dir.TrainResult:
    """Saves the model, evaluates the test split if any, and writes results.json."""
    config, manifest = plan.config, plan.manifest
    files = {"model": config.path("model.keras")}
    if config.save_h5:
        files["model_h5"] = config.path("model.h5")
    for path in files.values():
        run_dir.save_model(model, path)
    history = callbacks.read_history(config.path("history.json"))
    test = None
    if "test" in manifest.splits:
        report = evaluation.evaluate_split(model, config.records, "test", plan.eval_input, manifest.class_names,
                                           manifest)
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
    config: run_config.TrainConfig, stop: threading.Event | None = None,
    progress: tuple[keras.callbacks.Callback, ...] = (),
) -> run_dir.TrainResult:
    """Trains (or resumes training), saves everything listed in the module doc.

    `stop`, once set (train.py sets it on SIGTERM and Ctrl-C), ends training
    at the next batch, with a backup of that batch: run_dir.Stopped.
    `progress`: callbacks added to every fit (train.py's input watchdog).

    The records are held shared while the run reads them (a conversion into
    them is refused), their manifest read once (`guard.reading`) and the run
    worked out once from it (`run_plan.plan_run`); the records are checked
    against that manifest at each epoch's start and end, before each backup
    and after the test split's evaluation (`guard.HeldRecords`).

    Raises:
      cli.UserError, train.py's one-line errors: records missing, damaged, without a
        train split or with shards missing (cli.MissingError, cli.InputError), a
        model_dir that holds another run (run_dir.RunMismatchError), records being
        converted or a model_dir in use (fileio.LockedError), records replaced during
        the run (guard.RecordsChangedError), no dispatcher at --data_service.
    """
    remedy = "wait for that run to end, or pass another --model_dir"
    policy = keras.mixed_precision.global_policy()
    processes = distribution.Processes.from_env()
    distribution.initialize(processes)  # before any JAX computation
    placement = distribution.place(config, processes)
    try:
        with guard.reading(config.records) as records:
            plan = run_plan.plan_run(config, records.manifest, placement=placement)
            _check_records(plan)
            if not processes.writer:  # only process 0 writes, and holds, the model_dir
                return _train(plan, records, stop, progress)
            fileio.makedirs(config.model_dir)
            with fileio.held(config.model_dir, remedy):
                return _train(plan, records, stop, progress)
    finally:  # a run sets the global precision policy and distribution; its caller gets its own back
        keras.mixed_precision.set_global_policy(policy)
        if placement.jax:
            keras.distribution.set_distribution(None)


def _train(
    plan: run_plan.RunPlan, records: guard.HeldRecords, stop: threading.Event | None,
    progress: tuple[keras.callbacks.Callback, ...] = (),
) -> run_dir.TrainResult:
    """train_and_evaluate, with the records and the model_dir held."""
    config, processes = plan.config, plan.placement.processes
    settings = run_settings(config, plan.manifest)
    distribution.agree(processes, "settings or records", repr(sorted(settings.items())) + f"{config.epochs}")
    done, finished = _finished_run(plan, settings)
    if finished:
        return finished
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    with distribution.model_scope(config, plan.placement):
        model = build_model(plan)
        setup = describe_setup(plan)
        logging.info("setup:\n%s", "\n".join(f"  {key:<13} {value}" for key, value in setup.items()))
        for warning in hardware.cpu_only_warnings(plan.hardware, config.mixed_precision, config.jit_compile):
            logging.warning("%s", warning)
        # A resumed run has the same settings (record_settings refused any other),
        # so the pictures its first run drew still hold.
        if processes.writer and config.pictures and (
            done == 0 or not all(fileio.exists(config.path(name)) for name in pictures.INPUT_PICTURES)
        ):
            pictures.save_input_pictures(config.model_dir, config.records, plan.manifest, plan.train_input,
                                         plan.eval_input, config.seed)
        _fit(plan, records, model, stop, progress)
    # Every process logs it: the processes of one run end with the same weights.
    logging.info("final weights: sha256 %s (process %d of %d)", weights_digest(model), processes.index, processes.count)
    if not processes.writer:
        return run_dir.TrainResult(config.epochs, None, {}, setup, records=fileio.absolute(config.records))
    if plan.placement.even_batches:
        model = _local_copy(plan, model)
    return _save_results(plan, records, model, setup)


def weights_digest(model: keras.Model) -> str:
    """The first 16 hex digits of the SHA-256 of the model's weights, in order."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()[:16]


def _local_copy(plan: run_plan.RunPlan, model: keras.Model) -> keras.Model:
    """The trained model on this process's first device alone, no distribution: to save, test and
    export without the other processes, and on batches of any size."""
    weights = model.get_weights()  # replicated: every process holds them whole
    keras.distribution.set_distribution(None)
    local = build_model(plan)
    local.set_weights(weights)
    return local
