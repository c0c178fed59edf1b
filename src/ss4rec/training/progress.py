"""Progress of a training epoch: a tqdm bar on a terminal, plain log lines everywhere else.

    >>> progress = EpochProgress("epoch 3", total=480, interval=30.0, bar=False)  # doctest: +SKIP
    >>> for batch in batches:  # doctest: +SKIP
    ...     progress.update(loss=loss.item(), lr=lr)
    >>> progress.close()  # doctest: +SKIP

A trainer that reads losses back from the GPU only now and then passes them with
:meth:`EpochProgress.add_loss` when it has them (:meth:`EpochProgress.line_due` says a line
is about to be written: the moment to read them back) and calls ``update(lr=lr)`` per batch.

Log lines (files, pipes, pods) come after the first batch, then every ``interval`` seconds:
``epoch 3: batch 120/480 (25%), 0.41 s/batch, ETA 2m27s, loss 6.1234 (mean per target),
lr 0.001``. The loss is the mean of the batch losses since the previous line; each batch loss
is already a mean over that batch's targets.
"""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

logger = logging.getLogger("ss4rec.training.progress")


def format_seconds(seconds: float) -> str:
    """``157.2`` -> ``'2m37s'``; ``4000`` -> ``'1h06m'``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class EpochProgress:
    """Reports one pass over ``total`` batches (see the module docstring)."""

    def __init__(self, what: str, total: int, interval: float, bar: bool):
        self.what, self.total, self.interval = what, total, interval
        self.start = self.last_line = time.monotonic()
        self.done = 0
        self._losses: list[float] = []
        self._latest_loss: float | None = None
        self._bar = None
        if bar:
            self._bar = tqdm(total=total, desc=what, ncols=100, leave=False)

    def add_loss(self, loss: float) -> None:
        """One batch's loss, read back after its ``update`` (or before it)."""
        self._losses.append(loss)
        self._latest_loss = loss

    def line_due(self) -> bool:
        """Whether the next :meth:`update` writes a progress line (or refreshes the bar)."""
        if self._bar is not None:
            return time.monotonic() - self.last_line >= 1.0
        done = self.done + 1
        if self.interval <= 0 or done == self.total:
            return False
        return done == 1 or time.monotonic() - self.last_line >= self.interval

    def update(self, loss: float | None = None, lr: float | None = None) -> None:
        self.done += 1
        if loss is not None:
            self.add_loss(loss)
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(1)
            if self._latest_loss is not None and (loss is not None or now - self.last_line >= 1.0):
                self.last_line = now
                self._bar.set_postfix(loss=f"{self._latest_loss:.4f}", lr=f"{lr:.3g}" if lr is not None
                                      else "-", refresh=False)
            return
        if self.interval <= 0 or self.done == self.total:
            return
        if self.done == 1 or now - self.last_line >= self.interval:
            self.last_line = now
            logger.info(self.line(now, lr))

    def line(self, now: float, lr: float | None) -> str:
        per_batch = (now - self.start) / self.done
        eta = per_batch * (self.total - self.done)
        text = (f"{self.what}: batch {self.done}/{self.total} ({self.done / self.total:.0%}), "
                f"{per_batch:.2f} s/batch, ETA {format_seconds(eta)}")
        if self._losses:
            text += f", loss {sum(self._losses) / len(self._losses):.4f} (mean per target)"
            self._losses = []
        if lr is not None:
            text += f", lr {lr:.3g}"
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
