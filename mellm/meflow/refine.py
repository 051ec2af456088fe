"""MEFlowNet-refine: learned refinement of a classical flow for sub-pixel facial motion (CPU-sized).

Why not the from-scratch network (model.MEFlowNet) on a CPU: a warping network without a cost
volume, recurrent at 1/8 resolution, has to learn matching itself; in ~1k CPU steps it learned
the head flow and "no expression" (its expression EPE equalled zero flow's, bench/results/flow.md
before this model). Classical DIS at full resolution already finds sub-pixel motion well. So
this network starts from it and learns what DIS gets wrong, and the head/expression split:

  init        DIS (finest scale 0, as mellm.flow.DIS) of onset -> apex at full resolution, fixed;
  encoder     shared convs down to 1/4 (model.downsample) over each frame, standardised per frame (lighting
              flicker changes gain, not structure);
  iterations  warp the apex features by the current flow (init + learned residual), feed onset
              features, warped features, their difference, the flow and the init's brightness
              residual to a ConvGRU; it predicts a residual update (convex-upsampled, added to
              the full-resolution init, so DIS's fine detail is kept) and per-pixel head
              confidence logits;
  head        an affine field fitted to the refined facial flow by weighted least squares with
              the learned confidences, reweighted twice with Tukey weights on its residual (so the
              moving AU regions drop out, as perception's own affine removal does with landmark
              masks); expression = facial - head exactly.

The output layer starts at zero: an untrained network is DIS plus a uniform affine head fit; the
benchmark reports that beside the trained model, so the learned part's contribution shows.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mellm.meflow.model import ConvGRU, ResBlock, _grid, affine_flow, convex_upsample, warp


def dis_flow(onset: torch.Tensor, apex: torch.Tensor) -> torch.Tensor:
    """DIS (medium preset, finest scale 0) per batch element: (B,1,H,W) grey 0-255 -> (B,2,H,W), fixed."""
    impl = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    impl.setFinestScale(0)
    a = onset[:, 0].detach().cpu().clamp(0, 255).round().to(torch.uint8).numpy()
    b = apex[:, 0].detach().cpu().clamp(0, 255).round().to(torch.uint8).numpy()
    flows = np.stack([impl.calc(x, y, None) for x, y in zip(a, b)])
    return torch.from_numpy(flows).permute(0, 3, 1, 2).to(device=onset.device, dtype=onset.dtype)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / (std + 1.0)


def robust_affine_fit(flow: torch.Tensor, logits: torch.Tensor, passes: int = 2) -> torch.Tensor:
    """Affine coefficients (B,3,2) on _grid fitted to `flow` (B,2,h,w) with softmax(logits) weights,
    then `passes` Tukey reweightings on the residual (scale from its weighted median-like spread)."""
    b, _, h, w = flow.shape
    g = _grid(h, w, flow)  # (N, 3)
    target = flow.reshape(b, 2, -1).transpose(1, 2)  # (B, N, 2)
    base = torch.softmax(logits.reshape(b, -1), 1)
    wts = base
    eye = 1e-6 * torch.eye(3, device=g.device, dtype=g.dtype)
    coef = None
    for i in range(passes + 1):
        gw = g.unsqueeze(0) * wts.unsqueeze(-1)
        coef = torch.linalg.solve(gw.transpose(1, 2) @ g + eye, gw.transpose(1, 2) @ target)
        if i == passes:
            break
        resid = (target - g @ coef).norm(dim=-1)  # (B, N)
        scale = 4.685 * (1.4826 * resid.detach().median(dim=1, keepdim=True).values).clamp(min=0.05)
        tukey = (1 - (resid / scale) ** 2).clamp(min=0) ** 2
        wts = base * tukey
        wts = wts / wts.sum(1, keepdim=True).clamp(min=1e-12)
    return coef


class MEFlowRefine(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        c, hd, cd = cfg.feature_dim, cfg.hidden_dim, cfg.context_dim
        half = max(8, c // 2)
        layers = [nn.Conv2d(1, half, 5, stride=2, padding=2), nn.GroupNorm(8, half), nn.ReLU(), ResBlock(half)]
        for i in range({4: 1, 8: 2}[cfg.downsample]):
            layers += [nn.Conv2d(half if i == 0 else c, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.ReLU()]
        self.encoder = nn.Sequential(*layers, ResBlock(c))
        self.context = nn.Sequential(nn.Conv2d(c + 1, hd + cd, 3, padding=1))
        self.motion = nn.Sequential(nn.Conv2d(3 * c + 4, hd, 3, padding=1), nn.ReLU())
        self.gru = ConvGRU(hd, hd + cd)
        self.decoder = nn.Sequential(nn.Conv2d(hd, hd, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(hd, 3 + 2 * cfg.uncertainty, 3, padding=1)  # residual (2), head logit (1), unc (2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.mask = nn.Sequential(nn.Conv2d(hd, 2 * hd, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * hd, 9 * cfg.downsample**2, 1))

    @torch.no_grad()
    def initial(self, onset: torch.Tensor, apex: torch.Tensor, init: torch.Tensor | None = None) -> dict:
        """The learned part switched off: DIS, its head fitted with uniform confidences (what an
        untrained network outputs); the benchmark and the eval report it beside the trained model."""
        init = dis_flow(onset, apex) if init is None else init
        k = self.cfg.downsample
        low = F.avg_pool2d(init, k) / k
        coef = robust_affine_fit(low, low.new_zeros(low.shape[0], 1, *low.shape[-2:]))
        head = affine_flow(coef, *init.shape[-2:], scale=k)
        return {"facial": init, "head": head, "expression": init - head}

    def forward(self, onset: torch.Tensor, apex: torch.Tensor, iterations: int | None = None,
                all_steps: bool = True, init: torch.Tensor | None = None) -> list[dict]:
        from mellm.meflow.model import MEFlowNet

        MEFlowNet.check_input(onset, apex)
        n_iter = iterations or self.cfg.iterations
        init = dis_flow(onset, apex) if init is None else init
        n1, n2 = _standardise(onset), _standardise(apex)
        # The init's brightness residual: where DIS's warp leaves the onset unexplained.
        resid0 = warp(n2, init) - n1
        feats = self.encoder(torch.cat([n1, n2], 0))
        f1, f2 = feats.chunk(2, 0)
        k = self.cfg.downsample
        hidden, context = torch.split(self.context(torch.cat([f1, F.avg_pool2d(resid0, k)], 1)),
                                      [self.cfg.hidden_dim, self.cfg.context_dim], 1)
        hidden, context = torch.tanh(hidden), F.relu(context)
        b, _, h, w = f1.shape
        init_low = F.avg_pool2d(init, k) / k  # in recurrent-resolution pixels
        delta = init.new_zeros(b, 2, h, w)
        out = []
        for i in range(n_iter):
            delta = delta.detach()
            flow_low = init_low + delta
            w2 = warp(f2, flow_low)
            x = self.motion(torch.cat([f1, w2, f1 - w2, flow_low, delta], 1))
            hidden = self.gru(hidden, torch.cat([x, context], 1))
            y = self.out(self.decoder(hidden))
            delta = delta + y[:, :2]
            if not all_steps and i < n_iter - 1:
                continue
            facial = init + convex_upsample(delta, 0.25 * self.mask(hidden), k)
            coef = robust_affine_fit(F.avg_pool2d(facial, k) / k, y[:, 2:3])
            head = affine_flow(coef, k * h, k * w, scale=k)
            step = {"facial": facial, "head": head, "expression": facial - head}
            if self.cfg.uncertainty:
                step["uncertainty"] = F.interpolate(y[:, 3:5], scale_factor=k, mode="bilinear", align_corners=False)
            out.append(step)
        return out
