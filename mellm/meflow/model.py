"""MEFlowNet-lite: a compact, iterative, warping-based flow network for micro-expressions.

After MELLM's MEFlowNet (WAFT-style; DESIGN.md "Learned flow"), made small enough for a CPU:

  encoder      a shared convolutional trunk at 1/4 or 1/8 resolution: features of both frames, and the
               onset frame's context and initial recurrent state;
  iterations   each one warps the apex features by the current facial flow (no cost volume),
               feeds onset features, warped features, the flow and the context to a ConvGRU;
  two heads    facial flow (a residual update, convex upsampling, optional mixture-of-Laplace
               uncertainty) and head flow: per-pixel proposals and confidences, fitted by weighted
               least squares with an affine field, so head motion is rigid by construction and
               expression = facial - head is exact at every iteration.

Input: grey frames (B, 1, H, W) in 0-255, H and W multiples of 8 (and of `downsample`). Output per iteration: facial,
head and expression flow (B, 2, H, W) in pixels, onset -> apex.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mellm.errors import MellmError

ARCHITECTURES = ("meflownet", "meflow_refine", "raft_small")


@dataclass
class MEFlowConfig:
    # meflownet: this file's network; raft_small: torchvision's RAFT-small architecture (random
    # init, facial flow only: the anchor the benchmark trains on the same data). raft_small uses
    # only `iterations` (its flow updates). meflow_refine (refine.py): learned refinement of a DIS
    # initialisation (recurrent at 1/`downsample`) plus the head/expression split.
    arch: str = "meflownet"
    feature_dim: int = 64
    hidden_dim: int = 48
    context_dim: int = 32
    downsample: int = 8  # recurrent resolution: 1/4 (GPU configs) or 1/8 (CPU); convex upsampling back
    iterations: int = 4
    uncertainty: bool = False  # predict a mixture-of-Laplace scale per pixel (SEA-RAFT style)

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise MellmError(f"model.arch={self.arch!r}: use one of {', '.join(ARCHITECTURES)}")
        if self.downsample not in (4, 8):
            raise MellmError(f"model.downsample={self.downsample}: use 4 or 8")
        for name in ("feature_dim", "hidden_dim", "context_dim"):
            if getattr(self, name) % 8 or getattr(self, name) < 8:
                raise MellmError(f"model.{name}={getattr(self, name)}: use a positive multiple of 8")
        if self.iterations < 1:
            raise MellmError(f"model.iterations={self.iterations}: use at least 1")

    def to_dict(self) -> dict:
        return asdict(self)


class ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.a = nn.Conv2d(dim, dim, 3, padding=1)
        self.b = nn.Conv2d(dim, dim, 3, padding=1)
        self.na, self.nb = nn.GroupNorm(8, dim), nn.GroupNorm(8, dim)

    def forward(self, x):
        return F.relu(x + self.nb(self.b(F.relu(self.na(self.a(x))))))


class Encoder(nn.Module):
    def __init__(self, cfg: MEFlowConfig):
        super().__init__()
        dim, half = cfg.feature_dim, max(8, cfg.feature_dim // 2)
        # Full-resolution detail (skin texture) is what sub-pixel motion shows in: a 5x5 stem and a
        # residual block at 1/2 before going down.
        layers = [nn.Conv2d(1, half, 5, stride=2, padding=2), nn.GroupNorm(8, half), nn.ReLU(), ResBlock(half),
                  nn.Conv2d(half, dim, 3, stride=2, padding=1), nn.GroupNorm(8, dim), nn.ReLU(), ResBlock(dim)]
        if cfg.downsample == 8:
            layers += [nn.Conv2d(dim, dim, 3, stride=2, padding=1), nn.GroupNorm(8, dim), nn.ReLU()]
        self.trunk = nn.Sequential(*layers, ResBlock(dim))
        self.features = nn.Conv2d(cfg.feature_dim, cfg.feature_dim, 1)
        self.context = nn.Conv2d(cfg.feature_dim, cfg.hidden_dim + cfg.context_dim, 1)

    def forward(self, img):
        return self.trunk(img)


class ConvGRU(nn.Module):
    def __init__(self, hidden: int, inputs: int):
        super().__init__()
        self.zr = nn.Conv2d(hidden + inputs, 2 * hidden, 3, padding=1)
        self.q = nn.Conv2d(hidden + inputs, hidden, 3, padding=1)

    def forward(self, h, x):
        z, r = torch.sigmoid(self.zr(torch.cat([h, x], 1))).chunk(2, 1)
        q = torch.tanh(self.q(torch.cat([r * h, x], 1)))
        return (1 - z) * h + z * q


def warp(features: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample `features` at x + flow(x) (flow in feature pixels), bilinear, borders replicated."""
    b, _, h, w = features.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    gx = 2 * (xs + flow[:, 0]) / max(w - 1, 1) - 1
    gy = 2 * (ys + flow[:, 1]) / max(h - 1, 1) - 1
    return F.grid_sample(features, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border", align_corners=True)


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """(B,2,h,w) -> (B,2,kh,kw): each fine pixel a learned convex combination of its 3x3 coarse neighbours."""
    b, _, h, w = flow.shape
    mask = torch.softmax(mask.view(b, 1, 9, k, k, h, w), dim=2)
    up = F.unfold(k * flow, 3, padding=1).view(b, 2, 9, 1, 1, h, w)
    up = (mask * up).sum(2).permute(0, 1, 4, 2, 5, 3)
    return up.reshape(b, 2, k * h, k * w)


def _grid(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(h*w, 3) normalised coordinates [x, y, 1] of pixel centres, centred, scaled by the larger side."""
    ys, xs = torch.meshgrid(torch.arange(h, device=like.device, dtype=like.dtype),
                            torch.arange(w, device=like.device, dtype=like.dtype), indexing="ij")
    s = max(h, w) / 2
    return torch.stack([(xs - (w - 1) / 2) / s, (ys - (h - 1) / 2) / s, torch.ones_like(xs)], -1).view(-1, 3)


def fit_affine(proposal: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Weighted least-squares affine field through per-pixel flow proposals -> coefficients (B, 3, 2)
    on the normalised grid (_grid). proposal (B,2,h,w); logits (B,1,h,w) -> softmax weights."""
    b, _, h, w = proposal.shape
    g = _grid(h, w, proposal)  # (N, 3)
    wts = torch.softmax(logits.view(b, -1), 1)  # (B, N)
    target = proposal.view(b, 2, -1).transpose(1, 2)  # (B, N, 2)
    gw = g.unsqueeze(0) * wts.unsqueeze(-1)  # (B, N, 3)
    normal = gw.transpose(1, 2) @ g + 1e-4 * torch.eye(3, device=g.device, dtype=g.dtype)
    return torch.linalg.solve(normal, gw.transpose(1, 2) @ target)


def affine_flow(coef: torch.Tensor, h: int, w: int, scale: float = 1.0) -> torch.Tensor:
    """The affine field of `coef` (fitted at the recurrent resolution, in its pixels) at h x w, times `scale`."""
    g = _grid(h, w, coef)
    return (g @ coef).transpose(1, 2).reshape(coef.shape[0], 2, h, w) * scale


class MEFlowNet(nn.Module):
    def __init__(self, cfg: MEFlowConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or MEFlowConfig()
        self.encoder = Encoder(cfg)
        hd, k = cfg.hidden_dim, cfg.downsample
        self.motion = nn.Sequential(nn.Conv2d(2 * cfg.feature_dim + 4, hd, 3, padding=1), nn.ReLU())
        self.gru = ConvGRU(hd, hd + cfg.context_dim)
        self.decoder = nn.Sequential(nn.Conv2d(hd, hd, 3, padding=1), nn.ReLU())
        # facial update (2), head proposal (2) and its confidence logit (1), uncertainty (2, optional)
        self.out = nn.Conv2d(hd, 5 + 2 * cfg.uncertainty, 3, padding=1)
        self.mask = nn.Sequential(nn.Conv2d(hd, 2 * hd, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * hd, 9 * k * k, 1))

    @staticmethod
    def check_input(onset: torch.Tensor, apex: torch.Tensor) -> None:
        if onset.shape != apex.shape or onset.dim() != 4 or onset.shape[1] != 1:
            raise MellmError(f"MEFlowNet takes two grey batches of one shape (B, 1, H, W); got {tuple(onset.shape)} "
                             f"and {tuple(apex.shape)}")
        h, w = onset.shape[-2:]
        if h % 8 or w % 8 or min(h, w) < 32:
            raise MellmError(f"MEFlowNet input {h}x{w}: height and width must be multiples of 8, at least 32")

    def forward(self, onset: torch.Tensor, apex: torch.Tensor, iterations: int | None = None,
                all_steps: bool = True) -> list[dict]:
        """Flows per iteration (only the last one when not `all_steps`: inference skips the upsampling)."""
        self.check_input(onset, apex)
        k = self.cfg.downsample
        n_iter = iterations or self.cfg.iterations
        both = self.encoder(torch.cat([onset, apex], 0) / 127.5 - 1)
        t1, t2 = both.chunk(2, 0)
        f1, f2 = self.encoder.features(t1), self.encoder.features(t2)
        hidden, context = torch.split(self.encoder.context(t1), [self.cfg.hidden_dim, self.cfg.context_dim], 1)
        hidden, context = torch.tanh(hidden), F.relu(context)
        b, _, h, w = f1.shape
        facial = f1.new_zeros(b, 2, h, w)  # in pixels of the recurrent resolution
        head = f1.new_zeros(b, 2, h, w)
        out = []
        for i in range(n_iter):
            facial, head = facial.detach(), head.detach()
            x = self.motion(torch.cat([f1, warp(f2, facial), facial, head], 1))
            hidden = self.gru(hidden, torch.cat([x, context], 1))
            y = self.out(self.decoder(hidden))
            facial = facial + y[:, :2]
            coef = fit_affine(head + y[:, 2:4], y[:, 4:5])
            head = affine_flow(coef, h, w)
            if not all_steps and i < n_iter - 1:
                continue
            facial_up = convex_upsample(facial, 0.25 * self.mask(hidden), k)
            head_up = affine_flow(coef, k * h, k * w, scale=k)
            step = {"facial": facial_up, "head": head_up, "expression": facial_up - head_up}
            if self.cfg.uncertainty:
                step["uncertainty"] = F.interpolate(y[:, 5:7], scale_factor=k, mode="bilinear", align_corners=False)
            out.append(step)
        return out


class RaftSmall(nn.Module):
    """torchvision's raft_small (no pretrained weights), grey in, facial flow per update out."""

    def __init__(self, cfg: MEFlowConfig):
        super().__init__()
        from torchvision.models.optical_flow import raft_small

        self.cfg = cfg
        self.raft = raft_small(weights=None)

    def forward(self, onset, apex, iterations: int | None = None, all_steps: bool = True) -> list[dict]:
        MEFlowNet.check_input(onset, apex)
        a, b = (x.expand(-1, 3, -1, -1) / 127.5 - 1 for x in (onset, apex))
        flows = self.raft(a, b, num_flow_updates=iterations or self.cfg.iterations)
        return [{"facial": f} for f in (flows if all_steps else flows[-1:])]


def build_model(cfg: MEFlowConfig) -> nn.Module:
    if cfg.arch == "meflow_refine":
        from mellm.meflow.refine import MEFlowRefine

        return MEFlowRefine(cfg)
    return RaftSmall(cfg) if cfg.arch == "raft_small" else MEFlowNet(cfg)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- checkpoints ---------------------------------------------------------------------------------

CHECKPOINT_FORMAT = "mellm-meflownet"
CHECKPOINT_VERSION = 1
MODEL_FILE = "meflownet.pt"


def save_model(model: nn.Module, folder: str | Path, info: dict | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL_FILE
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": model.cfg.to_dict(),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "info": info or {}}, path)
    return path


def checkpoint_file(path: str | Path) -> Path:
    """A model file from a run directory (RUN/model/), a checkpoint folder or the file itself."""
    p = Path(path)
    for candidate in (p, p / MODEL_FILE, p / "model" / MODEL_FILE):
        if candidate.is_file():
            return candidate
    raise MellmError(f"no MEFlowNet checkpoint at {p} (looked for {p / MODEL_FILE} and {p / 'model' / MODEL_FILE}); "
                     "train one with `mellm train-flow`")


def load_model(path: str | Path, device: str = "cpu") -> nn.Module:
    """Load a saved MEFlowNet; a file that is not one, or does not fit its own config, is a clear error."""
    file = checkpoint_file(path)
    try:
        blob = torch.load(file, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many kinds for a truncated or foreign file
        raise MellmError(f"{file} is not a readable MEFlowNet checkpoint: {type(e).__name__}: {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise MellmError(f"{file} is not a MEFlowNet checkpoint (no {CHECKPOINT_FORMAT!r} format tag)")
    if blob.get("version") != CHECKPOINT_VERSION:
        raise MellmError(f"{file}: checkpoint version {blob.get('version')}, this MELLM reads {CHECKPOINT_VERSION}")
    try:
        model = build_model(MEFlowConfig(**blob["config"]))
    except (TypeError, MellmError) as e:
        raise MellmError(f"{file}: its model config does not fit this MELLM: {e}") from None
    own, saved = model.state_dict(), blob["state_dict"]
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    shapes = [k for k in set(own) & set(saved) if own[k].shape != saved[k].shape]
    if missing or unexpected or shapes:
        raise MellmError(f"{file}: weights do not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                         f"other shapes {shapes[:3]})")
    model.load_state_dict(saved)
    model.info = blob.get("info", {})
    return model.eval().to(device)
