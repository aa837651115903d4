"""DALI data paths: ``loader.backend: dali`` (JPEG files) and ``dali_cache`` (the decode cache).

``pipelines`` holds the ``@pipeline_def`` functions and the augmentation they
share; ``loader`` turns them into ``ShardedLoader``s that emit the ``Batch``
contract; ``bad_images`` finds and reports undecodable files. nvidia.dali is
imported lazily (``pipelines.import_dali``) so the engine runs without it.
"""
