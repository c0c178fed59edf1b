"""A RecBole sequential dataset that keeps real, exact timestamps for SS4Rec.

RecBole turns every float field into float32, which quantises absolute epoch seconds
(~1.6e9) to 128 s, so intervals computed from them are wrong by minutes. RecBole's
bundled ``ml-100k.yaml`` also sets ``normalize_all: True``, which min-max scales the
timestamp to [0, 1]. SS4Rec discretises its state space with the real gaps, so this
dataset:

* keeps the time field (and its ``_list`` sequence) as float64 — exact to the second
  for any epoch time; the model subtracts in float64 and only then casts the (small)
  intervals to float32;
* never normalises the time field, even under ``normalize_all: True`` (other float
  fields are normalised as configured); naming the time field in ``normalize_field`` is
  an error.

RecBole picks it for the model ``SS4Rec`` (``create_dataset`` looks up
``recbole.data.dataset.SS4RecDataset``, registered by ``import ss4rec``). Like every
sequential dataset of our runs it stores histories by reference
(:class:`~ss4rec.data.sequences.FlatSequentialDataset`).
"""

from __future__ import annotations

import torch

from ss4rec.data.sequences import FlatSequentialDataset
from ss4rec.errors import ConfigError


class SS4RecDataset(FlatSequentialDataset):
    """:class:`ss4rec.data.sequences.FlatSequentialDataset` with exact, unnormalised timestamps."""

    def _normalize(self):
        time_field = self.time_field
        if time_field is None:
            return super()._normalize()
        if self.config["normalize_field"] and time_field in self.config["normalize_field"]:
            raise ConfigError(
                f"normalize_field lists the time field {time_field!r}, but SS4Rec needs real "
                f"timestamps: remove {time_field!r} from normalize_field"
            )
        if not self.config["normalize_all"]:
            return super()._normalize()
        # normalize_all minus the time field: run RecBole's normaliser on an explicit list.
        others = [f for f in self.float_like_fields if f != time_field]
        saved = self.config["normalize_all"], self.config["normalize_field"]
        self.config["normalize_all"], self.config["normalize_field"] = False, others or None
        try:
            super()._normalize()
        finally:
            self.config["normalize_all"], self.config["normalize_field"] = saved

    def _dataframe_to_interaction(self, data):
        interaction = super()._dataframe_to_interaction(data)
        time_field = self.time_field
        if time_field is not None and time_field in data:
            # float64 straight from pandas (which parsed the file as float64).
            interaction.interaction[time_field] = torch.as_tensor(
                data[time_field].to_numpy(dtype="float64")
            )
        return interaction
