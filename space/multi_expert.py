"""The multi-expert model (one expert per time-step interval) and soft interval assignment.

Routing and training use the same variable: integer t in [0, T) and the intervals of the
:class:`~memekit.space.spec.MemeSpec`. There is no learned router: expert n answers every t in its
interval ``[start_n, end_n)``.
"""

from __future__ import annotations

import torch
from torch import nn

from .expert import build_expert
from .spec import MemeSpec


class MultiExpert(nn.Module):
    """``forward(x, t)`` sends each sample to the expert owning its t, one call per non-empty group."""

    def __init__(self, spec: MemeSpec) -> None:
        super().__init__()
        self.spec = spec
        self.experts = nn.ModuleList(build_expert(e) for e in spec.experts)
        # interior cut points b_1..b_{N-1}: expert index = number of cuts <= t
        self.register_buffer("cuts", torch.tensor(spec.boundaries[1:-1], dtype=torch.long), persistent=False)

    def expert_index(self, t: torch.Tensor) -> torch.Tensor:
        """Index of the owning expert for each t, shape like t."""
        return torch.bucketize(t, self.cuts, right=True)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if len(self.experts) == 1:
            return self.experts[0](x, t)
        index = self.expert_index(t)
        groups = [(n, (index == n).nonzero(as_tuple=True)[0]) for n in range(len(self.experts))]
        groups = [(n, rows) for n, rows in groups if rows.numel()]
        if len(groups) == 1:  # the whole batch shares one expert (always so when sampling)
            return self.experts[groups[0][0]](x, t)
        out: torch.Tensor | None = None
        for n, rows in groups:
            y = self.experts[n](x[rows], t[rows])
            if out is None:
                out = y.new_empty((x.shape[0], *y.shape[1:]))
            out[rows] = y
        assert out is not None
        return out


class SoftIntervalSampler:
    """Training time-steps for expert n under soft interval assignment.

    With probability p_n, t ~ U(own interval); otherwise t ~ U([0, T)) (``uniform-all``) or
    t ~ U([0, T) minus own interval) (``uniform-complement``).
    """

    def __init__(self, spec: MemeSpec) -> None:
        self.spec = spec
        self.timesteps = spec.diffusion.timesteps

    def sample(self, expert: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` time-steps (int64) for ``expert``, on the generator's device (CPU without one)."""
        lo, hi = self.spec.intervals[expert]
        p = self.spec.soft_assignment[expert]
        device = generator.device if generator is not None else torch.device("cpu")
        own = torch.rand(n, generator=generator, device=device) < p
        t_own = lo + torch.randint(0, hi - lo, (n,), generator=generator, device=device)
        if hi - lo == self.timesteps:  # a single expert owns every t
            return t_own
        if self.spec.out_of_interval == "uniform-all":
            t_out = torch.randint(0, self.timesteps, (n,), generator=generator, device=device)
        else:
            width = hi - lo
            u = torch.randint(0, self.timesteps - width, (n,), generator=generator, device=device)
            t_out = torch.where(u < lo, u, u + width)
        return torch.where(own, t_own, t_out)
