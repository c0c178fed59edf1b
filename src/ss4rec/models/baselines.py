"""RecBole's SASRec and GRU4Rec, able to score every position (``train_mode: sequence``).

Whole-sequence training (:mod:`ss4rec.data.modes`) needs a model's hidden state at every
position, ``[B L H]``, where RecBole's ``forward`` returns only the last one. Both models
end ``forward`` with ``self.gather_indexes(output, item_seq_len - 1)``; the subclasses here
let that call return every position while :meth:`position_output` runs, so the model is
RecBole's own code, unchanged. Each keeps its RecBole name, so RecBole reads its defaults
YAML, and checkpoints and results name it as before. In prefix mode they are RecBole's
models exactly.
"""

from __future__ import annotations

from recbole.model.sequential_recommender.gru4rec import GRU4Rec as _RecBoleGRU4Rec
from recbole.model.sequential_recommender.sasrec import SASRec as _RecBoleSASRec


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


MODELS = {"SASRec": SASRec, "GRU4Rec": GRU4Rec}
