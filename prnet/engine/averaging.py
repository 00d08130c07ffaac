"""Weight averaging over the end of training (train.average_last): dense stochastic weight averaging.

`WeightAverage` keeps the running mean of the head's weights after each optimisation step of the last
`share · total_steps` steps: the trainable parameters and the head's floating-point buffers (BatchNorm statistics).
The frozen backbone, the prototype bank and what is made after training are left out. After the last epoch the mean
replaces the weights (`apply_to`) before anything is calibrated or evaluated, so the checkpoint, the image score's
statistics, the threshold and the test metrics are all the averaged model's.

Averaging draws no random numbers and does not touch the optimisation: a run with it trains the same weights, epoch
by epoch (the same epoch fingerprints), as the run without it; only the final weights differ. Its state is part of
every checkpoint, so an interrupted run resumes to the same average. The window is a share of the schedule, so a
run cannot be continued to more epochs once it is averaged: `load_state_dict` refuses another step count.
"""
from __future__ import annotations

from typing import Iterator

import torch

# what training does not change, or what is made after it: never averaged
FIXED_PREFIXES = ("backbone.", "bank.", "knn.", "second.")


def averaged_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of what training changes: the trainable parameters and the head's floating-point buffers."""
    for name, p in model.named_parameters():
        if p.requires_grad:
            yield name, p
    for name, b in model.named_buffers():
        if not name.startswith(FIXED_PREFIXES) and b.dtype.is_floating_point:
            yield name, b


class WeightAverage:
    """The mean of the weights after each of the last `steps` optimisation steps of `total_steps`."""

    def __init__(self, model: torch.nn.Module, share: float, total_steps: int):
        if not 0.0 < share <= 1.0:
            raise ValueError(f"the averaged share of the steps must be in (0, 1], got {share}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = int(total_steps)
        self.steps = max(1, round(share * total_steps))
        self.count = 0
        self.mean = {name: torch.zeros_like(t, dtype=torch.float32) for name, t in averaged_tensors(model)}

    @property
    def first_step(self) -> int:
        """The number of steps done when the first sample is taken (steps counted from 1)."""
        return self.total_steps - self.steps + 1

    @torch.no_grad()
    def update(self, model: torch.nn.Module, steps_done: int) -> None:
        """Take the weights into the mean if the `steps_done`-th step (counted from 1) is inside the window."""
        if steps_done < self.first_step or steps_done > self.total_steps:
            return
        self.count += 1
        for name, t in averaged_tensors(model):
            self.mean[name].lerp_(t.detach().float(), 1.0 / self.count)

    @torch.no_grad()
    def apply_to(self, model: torch.nn.Module) -> None:
        """Replace the weights by their mean (an error before the window has been reached)."""
        if self.count == 0:
            raise RuntimeError(f"no weights averaged yet (the window starts at step {self.first_step} of "
                               f"{self.total_steps})")
        for name, t in averaged_tensors(model):
            t.copy_(self.mean[name].to(t.dtype))

    def state_dict(self) -> dict:
        return {"total_steps": self.total_steps, "steps": self.steps, "count": self.count,
                "mean": {k: v.clone() for k, v in self.mean.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore a stored average; ValueError when it was made for another schedule or another model."""
        if (state["total_steps"], state["steps"]) != (self.total_steps, self.steps):
            raise ValueError(f"the stored weight average covers the last {state['steps']} of {state['total_steps']} "
                             f"steps, this run's the last {self.steps} of {self.total_steps}")
        if set(state["mean"]) != set(self.mean):
            raise ValueError("the stored weight average holds other tensors than this model's")
        self.count = int(state["count"])
        for k, v in state["mean"].items():
            self.mean[k].copy_(v)
