"""Where and at what precision `attrx train` computes: --device auto|cpu|cuda and
--amp fp32|bf16|fp16 (autocast; a GradScaler for fp16). Weights stay fp32 (autocast casts
per op), so a checkpoint is the same whatever trained it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Compute:
    device: torch.device
    precision: str
    scaler: torch.amp.GradScaler | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[self.precision])

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pinned memory and non-blocking copies on CUDA; nothing to do on the CPU."""
        return {k: self.move(v) for k, v in batch.items()}

    def move(self, t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory().to(self.device, non_blocking=True) if self.cuda else t

    def generator(self, seed: int) -> torch.Generator:
        """A generator on the training device: augmentation and modality dropout draw there."""
        return torch.Generator(device=self.device).manual_seed(seed)

    def prefetch(self, items: Iterable[tuple]) -> Iterator[tuple]:
        """(indices, inputs, labels) batches on the device. On CUDA the next batch is copied on a side
        stream (non_blocking, from pinned memory) while the current one computes; the compute stream
        waits only for its own batch's copy. On the CPU the batches pass through."""
        if not self.cuda:
            yield from items
            return
        stream = torch.cuda.Stream(device=self.device)

        def send(item):
            idx, batch, labels = item
            with torch.cuda.stream(stream):
                moved = self.to_device(batch), self.move(labels)
                done = torch.cuda.Event()
                done.record(stream)
            return idx, moved, done

        def ready(sent):
            idx, (batch, labels), done = sent
            current = torch.cuda.current_stream(self.device)
            current.wait_event(done)
            for t in (*batch.values(), labels):
                t.record_stream(current)  # their memory is not reused before the compute stream is done
            return idx, batch, labels

        pending = None
        for item in items:
            sent = send(item)
            if pending is not None:
                yield ready(pending)
            pending = sent
        if pending is not None:
            yield ready(pending)

    def step(self, loss: torch.Tensor, opt, params, max_norm: float = 1.0) -> None:
        """backward, gradient clipping and the optimiser step (through the scaler for fp16)."""
        if self.scaler is None:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            opt.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.scaler.step(opt)
        self.scaler.update()


def resolve(device: str = "auto", precision: str = "fp32") -> Compute:
    """auto: CUDA when this torch sees a GPU, else the CPU. Refuses what cannot run here, saying why."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "no GPU or CUDA driver is visible"
        raise ValueError(f"--device cuda: CUDA is not available ({why}); use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: use auto, cpu or cuda")
    if precision not in ("fp32", *DTYPES):
        raise ValueError(f"--amp {precision}: use fp32, bf16 or fp16")
    if precision == "fp16" and device == "cpu":
        raise ValueError("--amp fp16 needs --device cuda (its loss scaling is for GPUs); on the CPU use bf16")
    dev = torch.device(device)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    return Compute(dev, precision, scaler)
