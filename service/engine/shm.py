"""Slots in shared memory: how a front-end process hands one product to the inference process and
gets its outputs back without pickling or copying through a pipe.

An arena belongs to one front-end. It holds `n` slots; a slot holds one item's model inputs (as
`Predictor.decode_request` makes them, batch size 1), one row of each model output, and a cancel flag the
front-end raises when the item's client has gone or its deadline passed. Only the small
"slot k is ready" / "slot k is done" messages travel through a socket (`attrx.service.engine.process`).
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from attrx.service.contract.drift_stats import PROFILE_KEY
from attrx.service.procutil import close_shared_memory, segment_name

ALIGN = 64
TAG_BYTES = 128  # after the cancel flag: the product's request id (and trace context), ASCII, NUL-padded


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class Field:
    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Layout:
    """Where each input and output of one item lies inside a slot (plain data: sent to processes)."""

    inputs: tuple[Field, ...]
    outputs: tuple[Field, ...]
    flag_offset: int
    slot_bytes: int

    @classmethod
    def of(cls, inputs: dict[str, np.ndarray], outputs: list[np.ndarray]) -> Layout:
        """From one item's inputs (each [1, ...]) and one batch's outputs (each [B, ...])."""
        offset = 0
        fields_in, fields_out = [], []
        for name, arr in inputs.items():
            f = Field(name, tuple(arr.shape), arr.dtype.str, offset)
            fields_in.append(f)
            offset = _aligned(offset + f.nbytes)
        for i, arr in enumerate(outputs):
            f = Field(f"output{i}", (1, *arr.shape[1:]), arr.dtype.str, offset)
            fields_out.append(f)
            offset = _aligned(offset + f.nbytes)
        return cls(tuple(fields_in), tuple(fields_out), offset, _aligned(offset + 1 + TAG_BYTES))


class Arena:
    """n slots of `layout` in one shared memory block, with numpy views on each."""

    def __init__(self, layout: Layout, n: int, name: str | None = None):
        self.layout, self.n = layout, n
        size = max(1, layout.slot_bytes * n)
        self.owner = name is None
        self.shm = shared_memory.SharedMemory(name=name if name is not None else segment_name("arena"),
                                              create=self.owner, size=size if self.owner else 0)
        # processes spawned by the creator share its resource tracker, which unlinks the block if
        # every process dies without closing it; the creator unlinks it on a normal exit
        buf = self.shm.buf
        self.flags = np.ndarray((n,), np.uint8, buf, layout.flag_offset, (layout.slot_bytes,))
        self.tags = np.ndarray((n, TAG_BYTES), np.uint8, buf, layout.flag_offset + 1, (layout.slot_bytes, 1))
        self._inputs = [self._views(buf, f) for f in layout.inputs]
        self._outputs = [self._views(buf, f) for f in layout.outputs]
        names = [f.name for f in layout.inputs]
        self._profile = names.index(PROFILE_KEY) if PROFILE_KEY in names else None

    @property
    def name(self) -> str:
        return self.shm.name

    def _views(self, buf, f: Field) -> list[np.ndarray]:
        base = self.layout.slot_bytes
        return [np.ndarray(f.shape, np.dtype(f.dtype), buf, k * base + f.offset) for k in range(self.n)]

    # -- front-end side ---------------------------------------------------------------------
    def write_inputs(self, k: int, inputs: dict[str, np.ndarray]) -> None:
        for f, views in zip(self.layout.inputs, self._inputs, strict=True):
            arr = inputs[f.name]
            if arr.shape != f.shape:
                raise ValueError(f"input {f.name} has shape {arr.shape}; the slot holds {f.shape}")
            views[k][...] = arr
        self.flags[k] = 0

    def write_tag(self, k: int, tag: str) -> None:
        """What the engine's log lines about slot k's product name it by (its request id)."""
        raw = tag.encode("ascii", "replace")[:TAG_BYTES]
        self.tags[k, :len(raw)] = np.frombuffer(raw, np.uint8)
        self.tags[k, len(raw):] = 0

    def read_tag(self, k: int) -> str:
        return self.tags[k].tobytes().rstrip(b"\0").decode("ascii", "replace")

    def read_outputs(self, k: int) -> list[np.ndarray]:
        """Copies: the slot is reused once this returns."""
        return [views[k].copy() for views in self._outputs]

    def read_profile(self, k: int) -> np.ndarray | None:
        """A copy of the slot's profile input (PROFILE_KEY): the product's situations and input statistics."""
        return None if self._profile is None else self._inputs[self._profile][k].copy()

    def cancel(self, k: int) -> None:
        self.flags[k] = 1

    # -- inference side ---------------------------------------------------------------------
    def inputs(self, k: int) -> dict[str, np.ndarray]:
        """Views, not copies: valid until the slot is answered."""
        return {f.name: views[k] for f, views in zip(self.layout.inputs, self._inputs, strict=True)}

    def cancelled(self, k: int) -> bool:
        return bool(self.flags[k])

    def write_profile(self, k: int, profile: np.ndarray) -> None:
        """A followed product's profile, from the lead that decoded it, into a follower's slot."""
        if self._profile is not None:
            self._inputs[self._profile][k][...] = profile

    def write_outputs(self, k: int, outputs: list[np.ndarray], row: int) -> None:
        for views, out in zip(self._outputs, outputs, strict=True):
            views[k][0] = out[row]

    def close(self) -> None:
        self._inputs = self._outputs = []
        self.flags = np.empty(0, np.uint8)  # drop the view, so the mapping can close
        close_shared_memory(self.shm, self.owner)
