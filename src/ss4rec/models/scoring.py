"""Scores as dot products with the item embeddings: the loss and prediction of SS4Rec and TiSASRec.

A model mixing in :class:`TiedItemScoring` defines ``_seq_output(interaction)`` (the user's
hidden state after the history, ``[B H]``), ``item_embedding``, ``loss_type`` (``CE`` or
``BPR``) and ``loss_fct``; RecBole's three entry points follow from them.
"""

from __future__ import annotations


class TiedItemScoring:
    """RecBole's ``calculate_loss`` / ``predict`` / ``full_sort_predict`` from ``_seq_output``."""

    def calculate_loss(self, interaction):
        seq_output = self._seq_output(interaction)  # [B H]
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "BPR":
            neg_items = interaction[self.NEG_ITEM_ID]
            pos_score = (seq_output * self.item_embedding(pos_items)).sum(-1)  # [B]
            neg_score = (seq_output * self.item_embedding(neg_items)).sum(-1)  # [B]
            return self.loss_fct(pos_score, neg_score)
        logits = seq_output @ self.item_embedding.weight.t()  # [B n_items]
        return self.loss_fct(logits, pos_items)

    def predict(self, interaction):
        seq_output = self._seq_output(interaction)  # [B H]
        return (seq_output * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)  # [B]

    def full_sort_predict(self, interaction):
        seq_output = self._seq_output(interaction)  # [B H]
        return seq_output @ self.item_embedding.weight.t()  # [B n_items]
