"""Mixed-precision training: one object owns the autocast region, the fp16 gradient scaler and its state.

    precision = Precision("bf16", device, logger)
    zero_gradients(optimizer)
    with precision.autocast():
        output = method(labeled, unlabeled, StepContext(t, backward=precision.backward))  # may backpropagate parts
    precision.backward_and_step(output.loss, optimizer)

"off" (the default) is plain fp32, the paper's math: no autocast region, no scaler, backward() + step().
"bf16" keeps fp32's exponent range, so it needs no loss scaling. "fp16" multiplies the loss by a dynamic scale
before backward so small gradients do not underflow; a step whose gradients overflowed is skipped (the scale
is halved) and logged. Under bf16 a step with non-finite gradients is skipped and logged too.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import torch

from utils.autocast import DTYPES, autocast, check_precision_mode


class Precision:
    def __init__(self, mode: str = "off", device: torch.device | str = "cpu", logger: logging.Logger | None = None):
        self.mode = check_precision_mode(mode)
        self.device = torch.device(device)
        self.dtype = DTYPES.get(mode, torch.float32)
        self.logger = logger or logging.getLogger(__name__)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=mode == "fp16")
        self.skipped_steps = 0

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Region whose convolutions/matmuls run in the reduced dtype; a no-op context for mode "off"."""
        return autocast(self.mode, self.device)

    def backward(self, part: torch.Tensor, gradient: torch.Tensor | None = None,
                 also: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> None:
        """Backpropagate one part of the step's loss now (StepContext.backward): `part` seeded with `gradient`
        (default 1) times the loss scale of the final backward (fp16; a power of two, so the product is exact),
        together with (tensor, gradient) pairs whose gradients come from earlier parts of the same step (so
        already scaled). Outside any autocast region, as a backward must run."""
        seed = self.scaler.scale(torch.ones_like(part) if gradient is None else gradient)
        roots = [part, *(tensor for tensor, _ in also)]
        with torch.autocast(self.device.type, enabled=False) if self.enabled else contextlib.nullcontext():
            torch.autograd.backward(roots, [seed, *(g for _, g in also)])

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                          iteration: int | None = None) -> bool:
        """Backward + optimizer step (gradients must be zeroed before); False when the step was skipped."""
        if self.mode == "off":
            loss.backward()
            optimizer.step()
            return True
        if self.mode == "bf16":
            loss.backward()
            # Reduced-precision kernels can return a non-finite gradient with a finite loss (seen with CPU
            # bf16 3-D convolutions on tiny maps); skip such a step, as the fp16 scaler does, instead of
            # writing NaN into the weights.
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads and not bool(torch.stack([g.detach().float().abs().amax() for g in grads]).isfinite().all()):
                self.skipped_steps += 1
                where = f"iteration {iteration}: " if iteration is not None else ""
                self.logger.warning("%sbf16 gradients are not finite; optimizer step skipped (%d skipped so far)",
                                    where, self.skipped_steps)
                return False
            optimizer.step()
            return True
        scale_before = self.scaler.get_scale()
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)  # skipped inside when any gradient is inf/NaN
        self.scaler.update()
        # update() lowers the scale exactly when it found inf/NaN gradients, i.e. when the step was skipped.
        stepped = self.scaler.get_scale() >= scale_before
        if not stepped:
            self.skipped_steps += 1
            where = f"iteration {iteration}: " if iteration is not None else ""
            self.logger.warning("%sfp16 gradients overflowed; optimizer step skipped, loss scale %g -> %g "
                                "(%d skipped so far; persistent skips: use --amp bf16)", where, scale_before,
                                self.scaler.get_scale(), self.skipped_steps)
        return stepped

    def state_dict(self) -> dict:
        """What a resume checkpoint needs: the mode, the fp16 scaler state and the skip count."""
        return {"mode": self.mode, "scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore the scaler of an fp16 run; a checkpoint of another mode leaves the fresh scaler as it is."""
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if self.scaler.is_enabled() and state.get("mode") == "fp16" and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def __repr__(self) -> str:
        return f"Precision(mode={self.mode!r}, device={str(self.device)!r})"
