"""RecBole's SASRec, GRU4Rec and BERT4Rec, able to train on windows (``train_mode: sequence``).

Whole-sequence training (:mod:`ss4rec.data.modes`) needs a model's hidden state at every
position, ``[B L H]``, where RecBole's ``forward`` returns only the last one. SASRec and
GRU4Rec end ``forward`` with ``self.gather_indexes(output, item_seq_len - 1)``; the
subclasses here let that call return every position while :meth:`position_output` runs, so
the model is RecBole's own code, unchanged.

BERT4Rec is bidirectional: its hidden state at a position sees the items after it, so it
cannot score next items position by position. It trains on windows with its own cloze
objective instead (:meth:`BERT4Rec.window_loss`, :func:`cloze_windows`).

Each keeps its RecBole name, so RecBole reads its defaults YAML, and checkpoints and results
name it as before. In prefix mode (and in evaluation, always) they are RecBole's models exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender.bert4rec import BERT4Rec as _RecBoleBERT4Rec
from recbole.model.sequential_recommender.gru4rec import GRU4Rec as _RecBoleGRU4Rec
from recbole.model.sequential_recommender.sasrec import SASRec as _RecBoleSASRec

from ss4rec.data.sequences import TARGET_ITEMS


class AllPositions:
    """Mixin: ``position_output(interaction)`` -> ``[B L H]``, from the model's own ``forward``."""

    _all_positions = False

    def position_output(self, interaction):
        self._all_positions = True
        try:
            return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])  # [B L H]
        finally:
            self._all_positions = False

    def gather_indexes(self, output, gather_index):
        # output: [B L H]; every position while position_output runs, else RecBole's gather.
        return output if self._all_positions else super().gather_indexes(output, gather_index)


class SASRec(AllPositions, _RecBoleSASRec):
    """RecBole's SASRec (causal self-attention) with :meth:`position_output`."""


class GRU4Rec(AllPositions, _RecBoleGRU4Rec):
    """RecBole's GRU4Rec with :meth:`position_output`."""


def cloze_windows(next_items, seq_len, mask_token: int, mask_ratio: float, ft_ratio: float):
    """BERT4Rec's masked-item examples from a batch of windows.

    Args:
        next_items: ``[B L]`` the item after each input of a window, 0 at padding (the window
            batch's ``TARGET_ITEMS``).
        seq_len: ``[B]`` the window's number of inputs (>= 1).
        mask_token: the id that replaces a masked item (BERT4Rec's ``n_items``).
        mask_ratio: probability that an item is masked (BERT4Rec's ``mask_ratio``).
        ft_ratio: probability that a window is a next-item example instead (``ft_ratio``).

    Returns ``(masked_seq, labels)``, both ``[B L]``: the model's input, and the true item at
    each masked position (0 elsewhere: nothing to predict).

    A window's example is its items from the second input on, then the item after its last
    input: ``next_items``, laid out as RecBole's evaluation lays out a history (it drops the
    first item and puts the mask after the last). Each window is then, as in RecBole's
    ``mask_itemseq``, either a cloze example (each item masked with probability
    ``mask_ratio``; padding never) or, with probability ``ft_ratio``, a next-item example:
    only the last position masked, which is exactly the input RecBole's BERT4Rec scores at
    evaluation for the window's history. RecBole draws that choice once per batch and caps the
    masks of a sequence at ``int(mask_ratio * L)``; here it is drawn per window, uncapped.
    """
    batch, length = next_items.shape
    positions = torch.arange(length, device=next_items.device)  # [L]
    real = positions < seq_len.unsqueeze(1)  # [B L]
    cloze = (torch.rand(batch, length, device=next_items.device) < mask_ratio) & real  # [B L]
    last_only = positions == (seq_len - 1).unsqueeze(1)  # [B L]
    next_item_example = torch.rand(batch, 1, device=next_items.device) < ft_ratio  # [B 1]
    masked = torch.where(next_item_example, last_only, cloze)  # [B L]
    return torch.where(masked, mask_token, next_items), torch.where(masked, next_items, 0)


class BERT4Rec(_RecBoleBERT4Rec):
    """RecBole's BERT4Rec, plus :meth:`window_loss`: its cloze objective over whole windows."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.ft_ratio = config["ft_ratio"] or 0.0  # as RecBole's mask_itemseq: 0 when unset

    def window_loss(self, interaction, reduction: str = "mean"):
        """Mean (or ``reduction="sum"``) loss over the masked positions of a window batch.

        The masking lives here, not in ``data/``: it needs only the window's tensors, and
        the mask token and ratios are this model's own settings; the windows are cut for
        every model alike. CE over all items, or BPR with one uniform negative a position,
        each with BERT4Rec's output bias, as its ``calculate_loss``.
        """
        masked_seq, labels = cloze_windows(interaction[TARGET_ITEMS], interaction[self.ITEM_SEQ_LEN],
                                           self.mask_token, self.mask_ratio, self.ft_ratio)
        masked = labels > 0  # [B L]
        output = self.forward(masked_seq)[masked]  # [M H]
        targets = labels[masked]  # [M]
        if self.loss_type == "BPR":
            negatives = torch.randint(1, self.n_items - 1, targets.shape, device=targets.device)
            negatives = negatives + (negatives >= targets).long()  # uniform over items != target
            pos_score = (output * self.item_embedding(targets)).sum(-1) + self.output_bias[targets]
            neg_score = (output * self.item_embedding(negatives)).sum(-1) + self.output_bias[negatives]
            total = -torch.log(1e-14 + torch.sigmoid(pos_score - neg_score)).sum()
        else:
            logits = output @ self.item_embedding.weight[: self.n_items].t() + self.output_bias  # [M n_items]
            total = F.cross_entropy(logits, targets, reduction="sum")
        # No host sync for the count; a batch without any mask (all windows tiny) costs 0.
        return total if reduction == "sum" else total / masked.sum().clamp(min=1)


MODELS = {"SASRec": SASRec, "GRU4Rec": GRU4Rec, "BERT4Rec": BERT4Rec}
