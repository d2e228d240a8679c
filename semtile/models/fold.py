"""BatchNorm folded into the convolution before it, for inference engines."""

from __future__ import annotations

import torch

__all__ = ["fold_batchnorm"]


def fold_batchnorm(network: torch.nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d in a Sequential into it, in place (eval mode).

    Returns the number of layers folded. The folded network computes the same
    function in eval mode (to float32 rounding), with one layer fewer per pair:
    in reduced precision one rounding instead of two.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    network.eval()
    folded = 0
    for module in network.modules():
        if not isinstance(module, torch.nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d) and bn.track_running_stats:
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = torch.nn.Identity()
                folded += 1
    return folded
