"""The `meflownet` flow backend: a trained checkpoint behind mellm.flow's interface.

`backend(prev, nxt)` is the facial flow like any backend's; `backend.decompose(prev, nxt)` also
gives the network's head flow, which perception subtracts instead of fitting an affine field
(mellm.flow.expression_flow). A facial-flow-only checkpoint (raft_small) has no head: perception
then removes head motion as it does for classical flow.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mellm.errors import ConfigError, MellmError


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int):
    from mellm.meflow.model import load_model

    # Inference runs under torch.inference_mode() (below); never switch autograd off for the
    # whole process: a training run in the same process would silently stop getting gradients.
    return load_model(path)


def load_checkpoint(checkpoint: str | Path):
    """The model of a checkpoint, loaded once per process (reloaded when the file changes)."""
    from mellm.meflow.model import checkpoint_file

    file = checkpoint_file(checkpoint)
    return _load(str(file.resolve()), file.stat().st_mtime_ns)


def checkpoint_digest(checkpoint: str | Path) -> str:
    """A short hash of the checkpoint's bytes: perception caches key on it, not on the path alone."""
    from mellm.meflow.model import checkpoint_file

    return hashlib.sha256(checkpoint_file(checkpoint).read_bytes()).hexdigest()[:12]


@dataclass
class MEFlowBackend:
    checkpoint: str | None = None
    name: str = "meflownet"
    _model: object = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.checkpoint is None:
            raise ConfigError("flow=meflownet needs a checkpoint: --flow-checkpoint RUN (a `mellm train-flow` run "
                              "directory or its model/meflownet.pt)")

    def _run(self, prev: np.ndarray, nxt: np.ndarray) -> dict:
        import torch

        if prev.shape != nxt.shape or prev.ndim != 2:
            raise MellmError(f"meflownet takes two grey images of one size; got {prev.shape} and {nxt.shape}")
        h, w = prev.shape
        if h % 8 or w % 8 or min(h, w) < 32:
            raise MellmError(f"meflownet input {w}x{h}: sides must be multiples of 8, at least 32 (crop_size, spot_size)")
        if self._model is None:
            self._model = load_checkpoint(self.checkpoint)
        t = [torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None] for x in (prev, nxt)]
        with torch.inference_mode():
            out = self._model(t[0], t[1], all_steps=False)[-1]
        return {k: v[0].permute(1, 2, 0).numpy().astype(np.float32) for k, v in out.items() if k != "uncertainty"}

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        return self._run(prev, nxt)["facial"]

    def decompose(self, prev: np.ndarray, nxt: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(facial flow, head flow or None when the checkpoint has no head decoder)."""
        out = self._run(prev, nxt)
        return out["facial"], out.get("head")

    def __getstate__(self):  # worker processes load the model themselves
        return {**self.__dict__, "_model": None}
