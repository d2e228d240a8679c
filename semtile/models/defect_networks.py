"""Networks for defects: a patch classifier, a convolutional autoencoder and its variational twin.

All three are fully convolutional, so one network runs on 48-pixel lattice
patches and on the larger tiles of a whole scan alike (tile sides a multiple
of ``2**stages``). Inputs are intensities in [0, 1], normalised inside the
network (part of every export): by fixed statistics of the training data
(``normalise="fixed"``, the only choice that gives the same answer for a
pixel whatever tile it is seen in: the default for whole scans) or by each
tile's own mean and standard deviation (``"tile"``: the default for patches,
each judged against its own contrast; on the lattice patches this raised the
autoencoder's AUC-ROC from 0.83 to 0.99 in one measurement).

* :class:`PatchClassifier`: conv-BatchNorm-ReLU stages with max pooling, then
  global average *and* max pooling (a defect is small: the max keeps it) and
  one logit, "this patch holds a defect".
* :class:`AutoEncoder`: ``stages`` stride-2 convolutions down to ``latent``
  channels at 1/2**stages resolution and back up (transposed convolutions).
* :class:`VariationalAutoEncoder`: the same with a Gaussian posterior per
  latent cell (mean and log-variance), a standard normal prior and the
  reparameterisation trick in training; inference uses the mean.

The anomaly map (:class:`AnomalyMap`) is the squared reconstruction error per
pixel, smoothed by a Gaussian of ``smooth`` pixels (a few noisy pixels are
not a defect, a missing atom is); a VAE adds its latent term, each cell's KL
divergence spread over the pixels the cell covers, weighted by ``beta``
as in training, so the map's mean is the training loss (the negative ELBO).

They are built, like the paper's networks, by :func:`semtile.models.networks.build_model`,
and engines run :func:`semtile.models.networks.inference_module` of them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from semtile.errors import ModelError
from semtile.models.kinds import DEFECT_KINDS

__all__ = ["DefectArchitecture", "PatchClassifier", "AutoEncoder", "VariationalAutoEncoder", "AnomalyMap",
           "ClassifierProbability", "gaussian_kernel", "KINDS", "POOLINGS"]

KINDS = DEFECT_KINDS
NORMALISATIONS = ("auto", "fixed", "tile")
#: How a per-pixel anomaly map is pooled into one score per patch.
POOLINGS = ("max", "mean")


@dataclass(frozen=True)
class DefectArchitecture:
    """Everything needed to rebuild a defect network (stored in its card)."""

    kind: str
    c: int = 16  # channels of the first stage (doubling once further down)
    stages: int = 3  # stride-2 stages: tiles are multiples of 2**stages
    latent: int = 8  # autoencoders: channels of the bottleneck
    smooth: float = 2.0  # autoencoders: Gaussian sigma (pixels) of the error map
    beta: float = 0.05  # VAE: weight of the KL term per pixel
    pool: str = "max"  # autoencoders: how the map becomes a patch score
    normalise: str = "auto"  # training resolves it: "tile" for patches, "fixed" for scans
    mean: float = 0.5  # fixed normalisation: set from the training data
    std: float = 0.25

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelError(f"defect network kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("c", "stages", "latent"):
            if int(getattr(self, name)) < 1:
                raise ModelError(f"defect network {name} must be at least 1, got {getattr(self, name)}")
        if self.normalise not in NORMALISATIONS:
            raise ModelError(f"normalise must be one of {', '.join(NORMALISATIONS)}, got {self.normalise!r}")
        if self.pool not in POOLINGS:
            raise ModelError(f"pool must be one of {', '.join(POOLINGS)}, got {self.pool!r}")
        if not (self.std > 0 and math.isfinite(self.std) and math.isfinite(self.mean)):
            raise ModelError(f"normalisation needs a finite mean and a positive std, got {self.mean}, {self.std}")
        if self.smooth < 0 or self.beta < 0:
            raise ModelError(f"smooth and beta must not be negative, got {self.smooth}, {self.beta}")

    @property
    def multiple(self) -> int:
        """Tile sides must be a multiple of this."""
        return 2**self.stages

    @property
    def is_anomaly(self) -> bool:
        return self.kind in ("autoencoder", "vae")

    def with_(self, **changes) -> DefectArchitecture:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


class _Normalise(nn.Module):
    def __init__(self, arch: DefectArchitecture):
        super().__init__()
        if arch.normalise not in ("fixed", "tile"):
            raise ModelError(f"normalise {arch.normalise!r} must be resolved to 'fixed' or 'tile' before building")
        self.per_tile = arch.normalise == "tile"
        self.mean, self.std = float(arch.mean), float(arch.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_tile:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = torch.sqrt(((x - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True) + 1e-6)
            return (x - mean) / std
        return (x - self.mean) / self.std


class PatchClassifier(nn.Module):
    """(B, 1, T, T) in [0, 1] -> (B,) defect logit."""

    def __init__(self, arch: DefectArchitecture):
        super().__init__()
        self.arch = arch
        self.normalise = _Normalise(arch)
        layers: list[nn.Module] = []
        widths = [arch.c * 2**i for i in range(arch.stages)]
        previous = 1
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * previous, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(self.normalise(x))
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)[:, 0]


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class AutoEncoder(nn.Module):
    """(B, 1, T, T) in [0, 1] -> reconstruction of the *normalised* input, same shape."""

    def __init__(self, arch: DefectArchitecture):
        super().__init__()
        self.arch = arch
        self.normalise = _Normalise(arch)
        c, wide = arch.c, 2 * arch.c
        down: list[nn.Module] = [_conv(1, c), nn.ReLU(inplace=True)]
        for i in range(arch.stages):
            down += [_conv(c if i == 0 else wide, wide, stride=2), nn.ReLU(inplace=True),
                     _conv(wide, wide), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*down)
        out = 2 * arch.latent if arch.kind == "vae" else arch.latent
        self.to_latent = nn.Conv2d(wide, out, 1)
        up: list[nn.Module] = [nn.Conv2d(arch.latent, wide, 1), nn.ReLU(inplace=True)]
        for i in range(arch.stages):
            width = c if i == arch.stages - 1 else wide
            up += [nn.ConvTranspose2d(wide, width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
                   _conv(width, width), nn.ReLU(inplace=True)]
        up.append(_conv(c, 1))
        self.decoder = nn.Sequential(*up)

    def encode(self, xn: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.encoder(xn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(self.normalise(x)))

    def parts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised input, reconstruction and (VAE) the posterior, for training and scoring."""
        xn = self.normalise(x)
        return {"input": xn, "reconstruction": self.decoder(self.encode(xn))}


class VariationalAutoEncoder(AutoEncoder):
    """The autoencoder with a Gaussian posterior per latent cell; ``forward`` decodes the mean."""

    def posterior(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(xn).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.posterior(self.normalise(x))
        return self.decoder(mu)

    def parts(self, x: torch.Tensor, sample: bool = False) -> dict[str, torch.Tensor]:
        xn = self.normalise(x)
        mu, logvar = self.posterior(xn)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        # KL(N(mu, sigma^2) || N(0, 1)) per latent cell, summed over channels: (B, 1, t, t).
        kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(dim=1, keepdim=True)
        return {"input": xn, "reconstruction": self.decoder(z), "kl": kl}


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 2-D Gaussian (1, 1, k, k), k = 2 * ceil(3 sigma) + 1; a 1x1 identity for sigma 0."""
    if sigma <= 0:
        return torch.ones(1, 1, 1, 1)
    radius = int(math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)[None, None]


class AnomalyMap(nn.Module):
    """An autoencoder or VAE -> per-pixel anomaly map (B, 1, T, T); what every engine runs.

    map = smooth((reconstruction - input)^2) [+ beta * KL of the cell / pixels per cell]
    """

    def __init__(self, network: AutoEncoder):
        super().__init__()
        self.network = network
        arch = network.arch
        self.register_buffer("kernel", gaussian_kernel(arch.smooth), persistent=False)
        self.pad = (self.kernel.shape[-1] - 1) // 2
        self.vae = arch.kind == "vae"
        self.beta = float(arch.beta)
        self.cell = arch.multiple

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The map's parts: ``error`` (smoothed squared error) and, for a VAE, ``latent`` (its per-pixel
        term) and ``kl`` (the KL divergence per latent cell)."""
        parts = self.network.parts(x)
        error = (parts["reconstruction"] - parts["input"]) ** 2
        if self.pad:
            error = F.conv2d(F.pad(error, (self.pad,) * 4, mode="reflect"), self.kernel)
        out = {"error": error}
        if self.vae:
            out["kl"] = parts["kl"]
            per_pixel = parts["kl"] / float(self.cell * self.cell)
            out["latent"] = self.beta * F.interpolate(per_pixel, scale_factor=self.cell, mode="bilinear",
                                                      align_corners=False)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        terms = self.terms(x)
        return terms["error"] + terms["latent"] if self.vae else terms["error"]


class ClassifierProbability(nn.Module):
    """A patch classifier with its sigmoid: the defect probability (B,)."""

    def __init__(self, network: PatchClassifier):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.network(x))
