"""adaptd.variants: making, describing and running a model's variants.

``build`` (with ``convert``, ``prune``, ``tflite_source``, ``preprocess``, ``dataset``) turns a
Keras model, a SavedModel or a ``.tflite`` file into precompressed variants, measured by
``metrics`` and ``measure`` and described by ``structure``; ``repository`` and ``manifest``
(``fields``, ``tensors``, ``digest``) are the on-disk model repository the daemon serves;
``runtime`` loads and runs one variant (LiteRT, or TensorFlow for a SavedModel); ``calibrate``
profiles variants for the structural predictor; ``zoo`` and ``demo`` build the bundled models.
TensorFlow and Keras are imported only by the modules that build (their log goes to ``buildlog``)
and by ``runtime`` when it loads a SavedModel.
"""
