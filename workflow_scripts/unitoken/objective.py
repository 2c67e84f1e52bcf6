"""UniToken's training objective: next-token cross-entropy plus the z-loss, on supervised positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workflow_scripts.unitoken.sequence import IGNORE


def lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, z_weight: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``CE + z_weight * mean(logsumexp(logits)^2)`` over the positions whose next token has a label.

    ``logits``: B×T×V; ``labels``: B×T, aligned with the input ids (IGNORE where unsupervised);
    position t is scored on ``labels[t + 1]``, as in every causal LM.
    """
    shifted = logits[:, :-1].float()
    targets = labels[:, 1:]
    supervised = targets != IGNORE
    if not supervised.any():
        raise ValueError("a batch without any supervised token")
    picked = shifted[supervised]
    ce = F.cross_entropy(picked, targets[supervised])
    z = torch.logsumexp(picked, dim=-1).pow(2).mean()
    return ce + z_weight * z, {"ce": ce.detach(), "z_loss": z.detach()}
