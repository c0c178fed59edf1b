r"""SS4Rec: continuous-time sequential recommendation with state space models.

Paper: "SS4Rec: Continuous-Time Sequential Recommendation with State Space Models"
(arXiv:2502.08132). Semantics follow the released code (XiaoWei-i/SS4Rec), without its bugs:

* item embedding (padding id 0), no positional embedding;
* per position ``k`` of a right-padded sequence of length ``n``: the interval to the next
  interaction ``t[k+1] - t[k]``; at the last real position the interval to the *target*
  (the positive item's time in training, the evaluated interaction's time when
  predicting); padded positions 0. Intervals are computed in float64 from exact
  timestamps (see :class:`ss4rec.data.dataset.SS4RecDataset`), then put on the model's
  time scale (below);
* each block: ``y = LN(x + Drop(S5(x, dt)))`` then ``out = LN(y + Drop(Mamba(y)))``
  (one LayerNorm shared by both residuals, as in the official code);
* scores are dot products with the tied item-embedding matrix; CE (default) or BPR loss.

**The time scale** decides what a gap does to the S5 state. S5's step at a position is
``Δ = s(gap) · exp(log_step)`` per state, with ``exp(log_step)`` initialised in
``dt_min..dt_max`` (0.001–0.1), and a state keeps ``|Λ̄| = exp(Re(Λ) Δ)`` of itself
(``Re Λ = -0.5`` at init). ``s(gap) = gap / unit`` (``time_transform: linear``, the paper's)
or ``log(1 + gap / unit)`` (``log1p``: long gaps compressed, so a day does not wipe the
state). ``time_unit`` sets ``unit``: seconds (the paper's raw timestamps and the default),
minutes, hours, days, a number of seconds, ``auto`` (the median positive gap between
consecutive training interactions, so a typical gap is one unit: see
:mod:`ss4rec.data.time_scale`) or ``normalized`` (the span of all timestamps, as min-max
normalised time in the official code). With seconds, a 1-hour gap leaves ~3e-9 of a trained
state: every gap of an hour or more wipes S5's memory, and only the time-blind Mamba carries
it across sessions. The resolved unit is logged and stored in ``results.json``
(``time_scale``).

**A zero gap** (two interactions in the same second, common in rating logs) gives
``Δ = 0``: ``Λ̄ = 1`` and ``B̄u = (Λ̄ − 1)/Λ · B̃u = 0``, so the item *does not enter* the S5
state (the state passes through unchanged; the item still reaches the output through
S5's ``D`` skip and through Mamba). That is the zero-order hold's exact limit, not a bug.

``model_type`` ablations are real here (the official code reads the key and ignores it):
``SS4Rec`` (both layers), ``S5-only`` (no Mamba), ``S6-only`` (no S5: time-blind, as
Mamba4Rec without its feed-forward), ``ignore-time`` (S5 with a constant unit step).

state_dict keys equal the official module names (``item_embedding.weight``,
``model.{i}.S5.seq.*``, ``model.{i}.S6.*``, ``model.{i}.LayerNorm.*``), so official
checkpoints load (:meth:`SS4Rec.load_state_dict` drops the official, unused top-level
``LayerNorm``).

Usage::

    import ss4rec
    ss4rec.run(model="SS4Rec", dataset="ml-100k", config_dict={"epochs": 1})
"""

from __future__ import annotations

import math

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss
from torch import nn

from ss4rec import ssm
from ss4rec.data import time_scale
from ss4rec.errors import ConfigError
from ss4rec.models.dropout import Dropout
from ss4rec.models.scoring import TiedItemScoring

MODEL_TYPES = ("SS4Rec", "S5-only", "S6-only", "ignore-time")
LOSS_TYPES = ("CE", "BPR")
TIME_UNITS = {"seconds": 1.0, "minutes": 60.0, "hours": 3600.0, "days": 86400.0}
DATA_TIME_UNITS = ("auto", "normalized")  # read from the data (ss4rec.data.time_scale)
TIME_TRANSFORMS = ("linear", "log1p")

# Keys of the official model that this implementation does not use (the official
# forward never calls its top-level LayerNorm).
_OFFICIAL_UNUSED_KEYS = ("LayerNorm.weight", "LayerNorm.bias")


def time_unit_seconds(time_unit, dataset=None) -> float:
    """Seconds per unit for ``time_unit``: a name in TIME_UNITS, a positive number, or one of
    DATA_TIME_UNITS, read from ``dataset`` (a split of the run's exact-time dataset)."""
    names = sorted(TIME_UNITS) + list(DATA_TIME_UNITS)
    if time_unit in DATA_TIME_UNITS:
        if dataset is None:
            raise ConfigError(f"time_unit={time_unit!r} is read from the data: pass the dataset")
        if time_unit == "auto":
            return time_scale.auto_unit(time_scale.training_gaps(dataset))
        span = time_scale.time_span(dataset)
        if span <= 0:
            raise ConfigError("time_unit='normalized' needs timestamps that differ: every loaded "
                              "interaction has the same time; use a fixed unit such as seconds")
        return span
    if isinstance(time_unit, str):
        if time_unit not in TIME_UNITS:
            raise ConfigError(f"time_unit={time_unit!r} is not one of {names} (or a positive number of "
                              "seconds per unit)")
        return TIME_UNITS[time_unit]
    if isinstance(time_unit, bool) or not isinstance(time_unit, (int, float)) or time_unit <= 0:
        raise ConfigError(f"time_unit={time_unit!r} must be one of {names} or a positive number")
    return float(time_unit)


def check_time_transform(transform) -> str:
    """``transform`` if it is one of TIME_TRANSFORMS, else a ConfigError naming them."""
    if transform not in TIME_TRANSFORMS:
        raise ConfigError(f"time_transform={transform!r} is not one of {TIME_TRANSFORMS}")
    return transform


def scaled_gaps(gaps: torch.Tensor, seconds_per_unit: float, transform: str = "linear") -> torch.Tensor:
    """``s(gap)``, the S5 step scale of gaps in seconds: ``gap/unit`` or ``log1p(gap/unit)``.

    Computed in the dtype of ``gaps`` (float64 keeps epoch-second gaps exact); 0 stays 0.
    """
    check_time_transform(transform)
    units = gaps / seconds_per_unit
    return torch.log1p(units) if transform == "log1p" else units


def state_kept(gap_seconds, seconds_per_unit: float, transform: str = "linear", dt_min: float = 0.001,
               dt_max: float = 0.1, lambda_real: float = -0.5):
    """Fraction ``exp(Re Λ · s(gap) · step)`` of an S5 state kept across a gap, at the smallest,
    median (geometric) and largest initial step: ``(kept at dt_max, median, kept at dt_min)``."""
    scale = float(scaled_gaps(torch.tensor(float(gap_seconds), dtype=torch.float64), seconds_per_unit, transform))
    steps = (dt_max, (dt_min * dt_max) ** 0.5, dt_min)
    return tuple(math.exp(lambda_real * scale * step) for step in steps)


def time_intervals(time_seq: torch.Tensor, seq_len: torch.Tensor, target_time: torch.Tensor) -> torch.Tensor:
    """Interval from each position to the next interaction (the target at the last one).

    Args:
        time_seq: ``[B L]`` timestamps of the history, right-padded (any float dtype;
            float64 keeps epoch seconds exact).
        seq_len: ``[B]`` number of real positions (>= 1).
        target_time: ``[B]`` time of the interaction being predicted.

    Returns:
        ``[B L]`` intervals in the dtype of ``time_seq``; padded positions are 0.
    """
    batch, length = time_seq.shape
    target_time = target_time.to(time_seq.dtype)
    nxt = torch.cat([time_seq[:, 1:], time_seq.new_zeros(batch, 1)], dim=1)  # [B L]
    positions = torch.arange(length, device=time_seq.device)  # [L]
    last = (seq_len - 1).unsqueeze(1)  # [B 1]
    nxt = torch.where(positions == last, target_time.unsqueeze(1), nxt)
    gaps = nxt - time_seq
    return torch.where(positions <= last, gaps, torch.zeros_like(gaps))


class SSBlock(nn.Module):
    """One SS4Rec block: time-aware S5, then Mamba, each with dropout, residual and LayerNorm."""

    def __init__(self, hidden_size, d_P, d_state, d_conv, expand, dt_min, dt_max, dropout_prob,
                 model_type, mamba_backend):
        super().__init__()
        self.model_type = model_type
        if model_type != "S6-only":
            self.S5 = ssm.S5(width=hidden_size, state_width=d_P, dt_min=dt_min, dt_max=dt_max)
        if model_type != "S5-only":
            self.S6 = ssm.Mamba(d_model=hidden_size, d_state=d_state, d_conv=d_conv, expand=expand,
                            backend=mamba_backend)
        self.dropout = Dropout(dropout_prob)  # nn.Dropout's distribution, faster masks on CPU
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=1e-12)

    def forward(self, x: torch.Tensor, dt: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        # x: [B L H], dt: [B L] (float32, already in time units), lengths: [B] real positions
        # (right padding; Mamba's CPU kernels skip the rest, whose outputs no one reads)
        if self.model_type != "S6-only":
            step = 1.0 if self.model_type == "ignore-time" else dt
            x = self.LayerNorm(x + self.dropout(self.S5(x, step)))
        if self.model_type != "S5-only":
            x = self.LayerNorm(x + self.dropout(self._mamba(x, lengths)))
        return x

    def _mamba(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        # Under fp16 autocast Mamba runs in fp32: its time-step path's gradients (dt_proj's
        # ~1e-14 at init) lie below fp16's smallest number even with loss scaling, so they
        # would be exactly 0. bf16 (fp32's range) keeps them: Mamba autocasts there.
        if _autocast_dtype(x.device.type) == torch.float16:
            with torch.autocast(device_type=x.device.type, enabled=False):
                return self.S6(x.float(), lengths=lengths)
        return self.S6(x, lengths=lengths)


def _autocast_dtype(device_type: str):
    """The dtype autocast casts to on ``device_type`` now, or None when autocast is off."""
    if device_type not in ("cpu", "cuda"):
        return None
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if device_type == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


class SS4Rec(TiedItemScoring, SequentialRecommender):
    r"""SS4Rec as a RecBole sequential recommender (see the module docstring)."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.num_layers = config["num_layers"]
        self.dropout_prob = config["dropout_prob"]
        self.loss_type = config["loss_type"]
        self.model_type = config["model_type"]
        self.time_transform = check_time_transform(config["time_transform"] or "linear")
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"model_type={self.model_type!r} is not one of {MODEL_TYPES}")
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"loss_type={self.loss_type!r} is not one of {LOSS_TYPES}")
        if config["d_H"] is not None and config["d_H"] != self.hidden_size:
            raise ConfigError(
                f"d_H={config['d_H']} must equal hidden_size={self.hidden_size} "
                "(S5 works on the hidden state); drop d_H or make them equal"
            )

        self.TIME_FIELD = config["TIME_FIELD"]
        self.TIME_SEQ = self.TIME_FIELD + config["LIST_SUFFIX"]
        if self.TIME_SEQ not in dataset.field2type:
            raise ConfigError(
                f"SS4Rec needs the time field {self.TIME_FIELD!r}, but the dataset has no "
                f"{self.TIME_SEQ!r}: add {self.TIME_FIELD!r} to load_col.inter "
                f"(e.g. load_col: {{inter: [user_id, item_id, {self.TIME_FIELD}]}})"
            )
        # Seconds per unit of the S5 step scale (a float, not a buffer: the state_dict stays the
        # official one; auto/normalized are read again from the same split when a run is restored).
        self.time_unit = time_unit_seconds(config["time_unit"], dataset)
        self.time_scale = {"time_unit": config["time_unit"], "seconds_per_unit": self.time_unit,
                           "time_transform": self.time_transform}
        if config["time_unit"] in DATA_TIME_UNITS:
            self.logger.info(f"time_unit {config['time_unit']}: 1 unit = {self.time_unit:.6g} s "
                             f"(time_transform {self.time_transform})")

        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.model = nn.ModuleList(
            SSBlock(
                hidden_size=self.hidden_size,
                d_P=config["d_P"],
                d_state=config["d_state"],
                d_conv=config["d_conv"],
                expand=config["expand"],
                dt_min=config["dt_min"],
                dt_max=config["dt_max"],
                dropout_prob=self.dropout_prob,
                model_type=self.model_type,
                mamba_backend=config["mamba_backend"],
            )
            for _ in range(self.num_layers)
        )
        self.loss_fct = BPRLoss() if self.loss_type == "BPR" else nn.CrossEntropyLoss()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        # As the official code, but parameters flagged `_no_reinit` (Mamba's dt_proj.bias,
        # initialised to inverse-softplus of dt in [dt_min, dt_max]) keep their init.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            if not getattr(module.bias, "_no_reinit", False):
                module.bias.data.zero_()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load our own or an official SS4Rec state_dict (its unused top-level LayerNorm is dropped)."""
        state_dict = {k: v for k, v in state_dict.items() if k not in _OFFICIAL_UNUSED_KEYS}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def sequence_output(self, item_seq, item_seq_len, time_seq, target_time):
        """Hidden state at every position: ``[B L H]`` (position k sees items <= k; positions
        from ``item_seq_len`` on are padding, and what they hold is unspecified)."""
        # item_seq: [B L] item ids; item_seq_len: [B]; time_seq: [B L]; target_time: [B]
        dt = time_intervals(time_seq, item_seq_len, target_time)  # [B L], float64 if exact
        dt = scaled_gaps(dt, self.time_unit, self.time_transform).float()  # [B L] step scales
        output = self.item_embedding(item_seq)  # [B L H]
        for block in self.model:
            output = block(output, dt, item_seq_len)  # [B L H]
        return output

    def forward(self, item_seq, item_seq_len, time_seq, target_time):
        output = self.sequence_output(item_seq, item_seq_len, time_seq, target_time)  # [B L H]
        return self.gather_indexes(output, item_seq_len - 1)  # [B H]

    def position_output(self, interaction):
        """Hidden state at every position, ``[B L H]`` (whole-sequence training, ss4rec.models.losses).

        The interaction's time field is the time of the target after the last position.
        """
        return self.sequence_output(
            interaction[self.ITEM_SEQ],
            interaction[self.ITEM_SEQ_LEN],
            interaction[self.TIME_SEQ],
            interaction[self.TIME_FIELD],
        )

    def _seq_output(self, interaction):
        return self.forward(
            interaction[self.ITEM_SEQ],
            interaction[self.ITEM_SEQ_LEN],
            interaction[self.TIME_SEQ],
            interaction[self.TIME_FIELD],  # the time of the target / evaluated interaction
        )
