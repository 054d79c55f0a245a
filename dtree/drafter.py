"""DFlash block-diffusion drafter (placeholder while being written)."""
from __future__ import annotations


def default_target_layer_ids(num_target_layers: int, k: int) -> list[int]:
    """Target layers whose outputs feed the drafter (spec 1.2): k=1 -> [N//2]; else round(1 + i(N-4)/(k-1))."""
    if k <= 1:
        return [num_target_layers // 2]
    return [int(round(1 + i * (num_target_layers - 4) / (k - 1))) for i in range(k)]
