"""The converter: an image folder tree in, a records folder out, once.

    src/{split}/{class}/*          sources, walk      scan: files, labels, what is skipped and why
      -> shard plan                plan               seeded shuffle, shard names and sizes
      -> decode, normalise         imaging            worker processes: Pillow decode, RGB JPEG,
                                   duplicates         and each source's fingerprint (SHA-256, thumbnail, pHash)
      -> encode, write shards      write              one Example per image, shards in planned order,
           by the local pool       local              each written whole by a worker (or by Beam: beam)
      -> duplicate pairs           duplicates         in plan order; with drop, later copies skipped
      -> manifest, TFDS metadata,  conversion, out_dir, resume, rules, tfds_metadata,
         report, verify, swap      data_report        (verify: the records, no image decoded again)
    records/                       read by `pipeline.reader` and by TFDS

`conversion.convert_folder(ConversionConfig(...))` runs it; every step takes
that config (`config`); `commands` holds convert.py's flags. A local
conversion never imports TensorFlow.
"""
