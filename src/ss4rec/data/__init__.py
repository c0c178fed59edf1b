"""Data: the exact-time RecBole dataset, O(N) sequences, loaders, dataset adapters, splits, downloads.

Public downloads become atomic files here too: :mod:`~ss4rec.data.formats` tells which
converter a download needs (``movielens``, ``kuairec``, ``amazon``, ``recbole_atomic``),
reading it through :mod:`~ss4rec.data.sources` and :mod:`~ss4rec.data.delimited`, and
writing by the rules in :mod:`~ss4rec.data.interactions`.

How a user's history becomes batches (``train_mode``, windows, prefixes) lives here, so
models never know how batches were cut. :mod:`ss4rec.data.reading` is the one way atomic
files are read, by the data checks and by RecBole's loader alike.

Layer rule: may import :mod:`ss4rec.config` and :mod:`ss4rec.errors`; never models, training,
pipeline, evaluation, drift or commands.
"""
