"""TFRecord conversion and a tf.data input pipeline for image classifiers."""
