"""Data: the exact-time RecBole dataset, O(N) sequences, loaders, dataset adapters, splits, downloads.

How a user's history becomes batches (``train_mode``, windows, prefixes) lives here, so
models never know how batches were cut. :mod:`ss4rec.data.reading` is the one way atomic
files are read, by the data checks and by RecBole's loader alike.

Layer rule: may import :mod:`ss4rec.config` and :mod:`ss4rec.errors`; never models, training,
pipeline, evaluation, drift or commands.
"""
