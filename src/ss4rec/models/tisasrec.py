r"""TiSASRec: SASRec with time-interval-aware self-attention (Li, Wang & McAuley, WSDM 2020).

Semantics follow the paper (and its public PyTorch port, pmixer/TiSASRec.pytorch):

* item embedding (padding id 0) scaled by ``sqrt(H)``; absolute positions and clipped
  relative time intervals, each with its own key and value embeddings, enter attention:
  ``a_ij ∝ exp(q_i · (k_j + P^K_j + R^K_ij) / sqrt(d))`` and
  ``out_i = Σ_j a_ij (v_j + P^V_j + R^V_ij)``, causal (``j <= i``);
* blocks as in the paper: ``Q = LN(x)``, ``x = Q + Attn(Q, x)``, then ``LN`` and a point-wise
  feed-forward with a residual; a final LayerNorm; scores are dot products with the item
  embeddings; CE over all items (the harness' loss for every model) or BPR;
* the personalised interval ``r_ij = min(floor(|t_i - t_j| / s), time_span)``, where ``s`` is
  the user's smallest non-zero gap between consecutive interactions (1 s if there is none).

Two differences from the public code, both so that nothing from the future leaks in:

* ``s`` is taken over the history visible at the query position ``i`` (a running minimum),
  not over the user's whole log including the held-out items. At the last position of a
  history this is exactly the paper's scale of that history; and it makes every position's
  output equal to prefix mode's, so the model trains in ``train_mode: sequence``;
* sequences are right-padded (RecBole), so a query never attends to padding.

Memory: the attention never builds the ``[B, L, L, H]`` per-pair interval embeddings the
paper's formula suggests. The interval term of the scores is gathered from a ``[B, n, L,
time_span + 1]`` table of ``q_i · E^K_s`` and the value term is ``Σ_s w_is E^V_s``, with the
attention weights scatter-added into the same buckets (:func:`interval_attention`), so a
batch costs O(B·L·(L + time_span)) memory, like SASRec's plus one table. The plain form is
kept beside it (:func:`interval_attention_reference`), and the two agree to float rounding.

Dropout on the interval embeddings therefore differs from the public code's. There, dropout
hits each pair's ``R^K_ij`` and ``R^V_ij`` independently (``[B, L, L, H]`` masks). Here it
hits the ``[time_span + 1, H]`` key and value tables once per sequence: within a sequence,
all pairs in the same bucket share one dropped-out embedding. (Position embeddings were
already dropped out once per batch.) In evaluation, with no dropout, nothing differs.

Times are exact float64 epoch seconds (:class:`ss4rec.data.dataset.SS4RecDataset`). Like
SASRec, TiSASRec reads only the history's times, never the time of the request: its
ranking does not move when a recommendation is asked for later.
"""

from __future__ import annotations

import math

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss
from torch import nn

from ss4rec.errors import ConfigError
from ss4rec.models.scoring import TiedItemScoring


def interval_matrix(time_seq: torch.Tensor, seq_len: torch.Tensor, time_span: int) -> torch.Tensor:
    """Personalised, clipped time intervals ``[B L L]`` (long) between every pair of positions.

    Args:
        time_seq: ``[B L]`` timestamps, right-padded (float64 keeps epoch seconds exact).
        seq_len: ``[B]`` number of real positions.
        time_span: largest interval index; larger intervals are clipped to it.

    Row ``i`` is scaled by the smallest non-zero gap between consecutive real positions up to
    ``i``. Entries above the diagonal (the future, never attended to) and at padded
    positions are 0.
    """
    length = time_seq.shape[1]
    positions = torch.arange(length, device=time_seq.device)  # [L]
    real = positions.unsqueeze(0) < seq_len.unsqueeze(1)  # [B L]
    gaps = time_seq[:, 1:] - time_seq[:, :-1]  # [B L-1], gap into position k+1
    usable = (gaps > 0) & real[:, 1:]
    gaps = torch.where(usable, gaps, torch.full_like(gaps, math.inf))
    scale = torch.cat([gaps.new_full((gaps.shape[0], 1), math.inf), gaps], dim=1).cummin(dim=1).values  # [B L]
    scale = torch.where(torch.isinf(scale), torch.ones_like(scale), scale)  # no gap yet: 1 s
    diff = (time_seq.unsqueeze(2) - time_seq.unsqueeze(1)).abs() / scale.unsqueeze(2)  # [B L L]
    intervals = diff.floor().clamp(max=time_span).long()
    used = real.unsqueeze(2) & real.unsqueeze(1) & torch.ones(length, length, dtype=torch.bool,
                                                               device=time_seq.device).tril()  # [B L L]
    return torch.where(used, intervals, torch.zeros_like(intervals))


def interval_attention(q, k, v, intervals, interval_k, interval_v, dropout):
    """Causal attention with interval keys and values, in O(B·n·L·(L + span)) memory.

    Args:
        q, k, v: ``[B L n d]`` queries, keys and values (positions already added).
        intervals: ``[B L L]`` long, the bucket ``r_ij`` of every pair (:func:`interval_matrix`).
        interval_k, interval_v: ``[B S n d]`` interval key / value embedding of each of the
            ``S = time_span + 1`` buckets, per sequence (the batch dimension may be an
            expanded view).
        dropout: applied to the attention weights.

    Returns ``[B L n d]``. The same numbers as :func:`interval_attention_reference`, without
    its ``[B L L n d]`` per-pair embeddings: the interval term of the scores,
    ``q_i · R^K_ij``, is ``(q_i · E^K_s)`` for ``s = r_ij``, gathered from a ``[B n L S]``
    table; the value term ``Σ_j a_ij R^V_ij`` is ``Σ_s w_is E^V_s`` with the weights
    ``w_is = Σ_{j: r_ij = s} a_ij`` scatter-added into ``[B n L S]``.
    """
    batch, length, n_heads, head_size = q.shape
    index = intervals.unsqueeze(1).expand(batch, n_heads, length, length)  # [B n L L]
    q = q.transpose(1, 2)  # [B n L d]
    q_dot_buckets = torch.matmul(q, interval_k.permute(0, 2, 3, 1))  # [B n L S]
    scores = torch.matmul(q, k.permute(0, 2, 3, 1)) + q_dot_buckets.gather(-1, index)  # [B n L L]
    scores = scores / math.sqrt(head_size)
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    attn = dropout(scores.masked_fill(~causal, float("-inf")).softmax(dim=-1))  # [B n L L]
    bucket_weights = attn.new_zeros(q_dot_buckets.shape).scatter_add_(-1, index, attn)  # [B n L S]
    out = torch.matmul(attn, v.transpose(1, 2)) + torch.matmul(bucket_weights, interval_v.transpose(1, 2))
    return out.transpose(1, 2)  # [B L n d]


def interval_attention_reference(q, k, v, intervals, interval_k, interval_v, dropout):
    """The plain form of :func:`interval_attention` (same arguments and result), for tests.

    Builds the per-pair embeddings ``R^K, R^V`` as ``[B L L n d]`` tensors, as the paper
    writes the attention: O(B·L·L·H) memory.
    """
    length, head_size = q.shape[1], q.shape[3]
    rows = torch.arange(q.shape[0], device=q.device)[:, None, None]  # [B 1 1]
    rel_k, rel_v = interval_k[rows, intervals], interval_v[rows, intervals]  # [B L L n d]
    scores = torch.einsum("bind,bjnd->bnij", q, k) + torch.einsum("bind,bijnd->bnij", q, rel_k)
    scores = scores / math.sqrt(head_size)  # [B n L L]
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    attn = dropout(scores.masked_fill(~causal, float("-inf")).softmax(dim=-1))  # [B n L L]
    return torch.einsum("bnij,bjnd->bind", attn, v) + torch.einsum("bnij,bijnd->bind", attn, rel_v)


class TimeIntervalAttention(nn.Module):
    """Causal multi-head self-attention with absolute-position and time-interval keys and values."""

    attend = staticmethod(interval_attention)  # interval_attention_reference: the same, plainly

    def __init__(self, hidden_size, n_heads, attn_dropout_prob):
        super().__init__()
        if hidden_size % n_heads:
            raise ConfigError(f"hidden_size={hidden_size} must be a multiple of n_heads={n_heads}")
        self.n_heads, self.head_size = n_heads, hidden_size // n_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(attn_dropout_prob)

    def _heads(self, x):
        # [B L H] -> [B L n d]
        return x.view(*x.shape[:-1], self.n_heads, self.head_size)

    def forward(self, queries, keys, pos_k, pos_v, intervals, interval_k, interval_v):
        # queries, keys: [B L H]; pos_k, pos_v: [L H]; intervals: [B L L]; interval_k, interval_v: [B S H]
        q = self._heads(self.query(queries))  # [B L n d]
        k = self._heads(self.key(keys) + pos_k)  # [B L n d]
        v = self._heads(self.value(keys) + pos_v)  # [B L n d]
        out = self.attend(q, k, v, intervals, self._heads(interval_k), self._heads(interval_v), self.dropout)
        return out.reshape(queries.shape)  # [B L H]


class TiSASBlock(nn.Module):
    """``Q = LN(x)``; ``x = Q + Attn(Q, x)``; ``x = LN(x)``; ``x = x + FFN(x)``; padding zeroed."""

    def __init__(self, hidden_size, inner_size, n_heads, hidden_dropout_prob, attn_dropout_prob, eps):
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.attention = TimeIntervalAttention(hidden_size, n_heads, attn_dropout_prob)
        self.feed_forward_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden_size, inner_size), nn.Dropout(hidden_dropout_prob), nn.ReLU(),
            nn.Linear(inner_size, hidden_size), nn.Dropout(hidden_dropout_prob),
        )

    def forward(self, x, real, pos_k, pos_v, intervals, interval_k, interval_v):
        # x: [B L H]; real: [B L 1] (1.0 at real positions); intervals: [B L L]; interval_k/v: [B S H]
        q = self.attention_norm(x)
        x = self.feed_forward_norm(q + self.attention(q, x, pos_k, pos_v, intervals, interval_k, interval_v))
        return (x + self.feed_forward(x)) * real  # [B L H]


class TiSASRec(TiedItemScoring, SequentialRecommender):
    r"""TiSASRec as a RecBole sequential recommender (see the module docstring)."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.time_span = config["time_span"]
        self.loss_type = config["loss_type"]
        if self.loss_type not in ("CE", "BPR"):
            raise ConfigError(f"loss_type={self.loss_type!r} is not one of ('CE', 'BPR')")
        if not isinstance(self.time_span, int) or self.time_span < 1:
            raise ConfigError(f"time_span={self.time_span!r} must be a whole number >= 1")
        self.TIME_SEQ = config["TIME_FIELD"] + config["LIST_SUFFIX"]
        if self.TIME_SEQ not in dataset.field2type:
            raise ConfigError(
                f"TiSASRec needs the time field {config['TIME_FIELD']!r}: add it to load_col.inter "
                f"(e.g. load_col: {{inter: [user_id, item_id, {config['TIME_FIELD']}]}})"
            )
        hidden, dropout = self.hidden_size, config["hidden_dropout_prob"]
        self.item_embedding = nn.Embedding(self.n_items, hidden, padding_idx=0)
        self.position_key = nn.Embedding(self.max_seq_length, hidden)
        self.position_value = nn.Embedding(self.max_seq_length, hidden)
        self.interval_key = nn.Embedding(self.time_span + 1, hidden)
        self.interval_value = nn.Embedding(self.time_span + 1, hidden)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TiSASBlock(hidden, config["inner_size"], config["n_heads"], dropout,
                       config["attn_dropout_prob"], config["layer_norm_eps"])
            for _ in range(config["n_layers"])
        )
        self.final_norm = nn.LayerNorm(hidden, eps=config["layer_norm_eps"])
        self.loss_fct = BPRLoss() if self.loss_type == "BPR" else nn.CrossEntropyLoss()
        self.initializer_range = config["initializer_range"]
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # As RecBole's SASRec, so the two attention models start alike.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def sequence_output(self, item_seq, item_seq_len, time_seq):
        """Hidden state at every position: ``[B L H]`` (position k sees items and times <= k)."""
        # item_seq: [B L]; item_seq_len: [B]; time_seq: [B L] (float64 epoch seconds)
        length = item_seq.shape[1]
        real = (torch.arange(length, device=item_seq.device) < item_seq_len.unsqueeze(1))  # [B L]
        real = real.unsqueeze(-1).float()  # [B L 1]
        intervals = interval_matrix(time_seq, item_seq_len, self.time_span)  # [B L L]
        # Dropout per sequence and bucket (see the module docstring); in eval a view, no copy.
        interval_k = self.dropout(self.interval_key.weight.expand(len(item_seq), -1, -1))  # [B S H]
        interval_v = self.dropout(self.interval_value.weight.expand(len(item_seq), -1, -1))  # [B S H]
        positions = torch.arange(length, device=item_seq.device)  # [L]
        pos_k = self.dropout(self.position_key(positions))  # [L H]
        pos_v = self.dropout(self.position_value(positions))  # [L H]
        x = self.dropout(self.item_embedding(item_seq) * math.sqrt(self.hidden_size)) * real  # [B L H]
        for block in self.blocks:
            x = block(x, real, pos_k, pos_v, intervals, interval_k, interval_v)  # [B L H]
        return self.final_norm(x)  # [B L H]

    def forward(self, item_seq, item_seq_len, time_seq):
        output = self.sequence_output(item_seq, item_seq_len, time_seq)  # [B L H]
        return self.gather_indexes(output, item_seq_len - 1)  # [B H]

    def position_output(self, interaction):
        """Hidden state at every position, ``[B L H]`` (whole-sequence training, ss4rec.models.losses)."""
        return self.sequence_output(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], interaction[self.TIME_SEQ]
        )

    def _seq_output(self, interaction):
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], interaction[self.TIME_SEQ])
