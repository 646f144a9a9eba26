"""One image through the model (`segment`, and `eval`'s images): reading and the protocol's
resize (``io``), and the sliding-window segmentation of an array (``segment``)."""
