"""TFRecord conversion and a tf.data input pipeline for image classifiers.

Two halves and what they share:

    pipeline/converter/   image folders -> records/ (once)
    pipeline/reader/      records/ -> tf.data batches (every epoch)
    pipeline/             schema (features, manifest), tfrecord (the wire format,
                          without TensorFlow), verify, fileio (local path or URL),
                          plots, cli, commands
"""
