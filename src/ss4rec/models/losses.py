"""The loss of a batch of windows (``train_mode: sequence``): every counted position at once.

    >>> loss = window_loss(model, batch)  # doctest: +SKIP

The model gives its hidden state at every position (``model.position_output``, ``[B L H]``);
the positions in ``TARGET_MASK`` are scored against their next items with the model's own
loss: CE over all items (mean over positions), or BPR with one uniform negative per
position. For a causal model this is the mean of prefix mode's per-example losses over the
same targets, computed in one pass. A model with its own objective over windows (BERT4Rec's
cloze, :mod:`ss4rec.models.baselines`) defines ``window_loss(interaction, reduction)``,
which is used instead.
"""

from __future__ import annotations

from ss4rec.data.sequences import NEG_TARGETS, TARGET_ITEMS, TARGET_MASK


def supports_windows(model_class) -> bool:
    """Whether ``model_class`` can train in ``train_mode: sequence``."""
    return any(callable(getattr(model_class, name, None)) for name in ("position_output", "window_loss"))


def window_loss(model, interaction, reduction: str = "mean"):
    """Mean (or ``reduction="sum"``) loss over the counted positions of a window batch."""
    if callable(getattr(model, "window_loss", None)):
        return model.window_loss(interaction, reduction)
    hidden = model.position_output(interaction)  # [B L H]
    mask = interaction[TARGET_MASK]  # [B L]
    output = hidden[mask]  # [M H]
    targets = interaction[TARGET_ITEMS][mask]  # [M]
    if model.loss_type == "BPR":
        negatives = interaction[NEG_TARGETS][mask]  # [M]
        pos_score = (output * model.item_embedding(targets)).sum(-1)  # [M]
        neg_score = (output * model.item_embedding(negatives)).sum(-1)  # [M]
        loss = model.loss_fct(pos_score, neg_score)
    else:
        logits = output @ model.item_embedding.weight.t()  # [M n_items]
        loss = model.loss_fct(logits, targets)
    return loss * len(targets) if reduction == "sum" else loss
