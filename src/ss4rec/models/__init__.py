"""Models: what a network computes from a batch, and nothing about how it is trained.

- :mod:`ss4rec.models.ss4rec`: SS4Rec (time-aware S5, then Mamba, per block) and its ablations;
- :mod:`ss4rec.models.tisasrec`: TiSASRec (time-interval-aware self-attention);
- :mod:`ss4rec.models.baselines`: RecBole's SASRec, GRU4Rec (every position scored) and BERT4Rec
  (cloze over windows), able to train on windows;
- :mod:`ss4rec.models.scoring`: the tied item-embedding head (CE/BPR loss, predict, full sort);
- :mod:`ss4rec.models.losses`: the loss of a batch of windows (``train_mode: sequence``);
- :mod:`ss4rec.models.dropout`: ``nn.Dropout`` with faster CPU masks (SS4Rec's blocks).

Layer rule: may import :mod:`ss4rec.ssm`, :mod:`ss4rec.data` (batch field names),
:mod:`ss4rec.config` and :mod:`ss4rec.errors`; never training, pipeline, evaluation or commands.
"""
