"""The reader: a records folder in, batches for Keras out, with tf.data.

    manifest.json + shards    pipeline.schema       which files, how many records
      -> read, checked        read                  interleaved reads; counts and labels against the manifest
      -> parse, decode        transforms            Example -> uint8 image (DCT-scaled JPEG decode), label
      -> resize, cache        transforms, dataset   uint8 [size, size, 3]; decoded images kept in memory
      -> shuffle, augment     augment               one affine warp per image (OpenCV, TF ops or on device)
      -> batch, scale         dataset               float32 [batch, size, size, 3] in [0, 1], one-hot labels
      -> prefetch             dataset               or on tf.data service workers: service

`dataset.train_dataset` and `dataset.eval_dataset` build them (training at an
`epochs.EpochPosition`: each epoch from the seed and its number, its length
stated: `epochs.TrainPasses`); `commands` holds
data_service.py's flags. Nothing here imports the converter.
"""
