"""Non-finite steps: the train step skips them; `NonFiniteMonitor` stops a run after a streak.

`train_step` keeps params, statistics and optimiser state when the loss or gradient norm is not
finite and reports `nonfinite` = 1; the loop feeds these flags to `NonFiniteMonitor`, which raises
`NonFiniteStop` (naming the last good checkpoint) after `max_consecutive_nonfinite` in a row.
The flags are replicated scalars, so every process reaches the same decision at the same step.
"""

from __future__ import annotations

from typing import Any

from absl import logging

from detr_jax.core import checkpointing


class NonFiniteStop(RuntimeError):
    """Training stopped after `max_consecutive_nonfinite` skipped (non-finite) steps in a row."""


class NonFiniteMonitor:
    """Counts consecutive skipped steps on the host from the steps' `nonfinite` flags.

    The loop reads each step's flag one step late (after dispatching the next step), so the read
    waits for a step that is done or nearly done and the device always has the next step queued:
    no pipeline bubble, unlike reading the flag of the step just dispatched.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.streak = 0  # consecutive skipped steps up to the last observed one
        self.first_bad: int | None = None  # first step of the current streak
        self.total = 0

    def observe(self, step: int, nonfinite: float) -> None:
        if nonfinite > 0:
            self.streak += 1
            self.total += 1
            self.first_bad = step if self.streak == 1 else self.first_bad
            logging.warning(
                "step %d: non-finite loss or gradient norm, update skipped (%d in a row, "
                "%d in all; the limit is max_consecutive_nonfinite=%d)",
                step,
                self.streak,
                self.total,
                self.limit,
            )
        else:
            self.streak, self.first_bad = 0, None

    @property
    def exceeded(self) -> bool:
        return self.streak >= self.limit

    def error(self, manager: Any, step: int) -> NonFiniteStop:
        """The error to raise, naming the newest checkpoint saved before the streak."""
        manager.wait_until_finished()
        manager.reload()
        good = [s for s in manager.all_steps() if s <= self.first_bad]
        where = (
            f"the last good checkpoint is step {max(good)} at "
            f"{checkpointing.step_path(manager, max(good))}"
            if good
            else "no checkpoint was saved before it (restart from scratch)"
        )
        return NonFiniteStop(
            f"stopping at step {step}: the loss or gradient norm was non-finite in "
            f"{self.streak} consecutive steps ({self.first_bad}..{self.first_bad + self.streak - 1}"
            f"; max_consecutive_nonfinite={self.limit}); {where}. Its parameters come from finite "
            "updates only. See README 'Troubleshooting: NaN losses' (lower optim.lr, raise "
            "optim.warmup_steps, keep optim.clip_norm > 0, check the data for bad boxes)."
        )
