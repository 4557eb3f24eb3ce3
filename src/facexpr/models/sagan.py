"""A class-conditional self-attention GAN as an expression editor (seed 002's SA-GAN).

Seed 002 (FacePaint) trains "a custom class-conditional GAN architecture that relies on the
Wasserstein distance objective and a self-attention mechanism [SAGAN]": the generator gets the
input face concatenated with a randomly chosen target class, "at several points within both D and
G an attention map is computed over the activations", and the critic predicts the class. Its
figure 2 (the architecture) is not in the text, so the layout follows SAGAN (Zhang et al. 2019)
where the seed is silent:

* Generator: StarGAN's encoder-decoder (the one-hot target tiled into constant maps and
  concatenated to the RGB input; 7x7 conv, stride-2 downs, residual blocks, learned ups, 7x7 conv,
  tanh), with a self-attention block on every feature map whose scale (image size / map size) is
  listed in ``attention``: the bottleneck (1/4) and the first decoder stage (1/2) by default,
  SAGAN's best placements (its "feat32" and "feat64" at 128 px, Table 1).
* Critic: stride-2 4x4 convs with LeakyReLU and no normalisation, self-attention after the stages
  at the same scales, and one head of ``K + 1`` outputs over the whole image: ``K`` class logits
  plus one more. The recipe reads the extra output as the logit of the "generated" class (the
  seed's softmax cross-entropy losses) or as the Wasserstein realism score (``loss=wgan``).
* Spectral normalisation on every conv of both networks (SAGAN), on by default.

:class:`SelfAttention` is SAGAN's block: 1x1 query/key convs to ``C/8`` channels, a 1x1 value
conv, a softmax over positions, and ``x + gamma * o`` with ``gamma`` a learned scalar that starts
at 0, so a new block is exactly the identity and the network first learns local structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from facexpr.models.base import EMOTION_LABELS, Condition, GeneratorOutput
from facexpr.models.layers import ResidualBlock, check_image_size, conv_decoder, conv_encoder, init_weights


@dataclass
class SAGANConfig:
    """Architecture (defaults: 128 px, StarGAN's generator widths, SAGAN's attention placement).

    ``labels``: the expressions of the one-hot condition, comma-separated, in order.
    ``attention``: comma-separated scales k (feature maps of ``image_size / k`` px) that get a
    self-attention block, in G and in the critic.
    """

    image_size: int = 128
    labels: str = ",".join(EMOTION_LABELS)
    width: int = 64
    downs: int = 2
    res_blocks: int = 6
    attention: str = "4,2"
    critic_width: int = 64
    critic_max_width: int = 1024
    spectral_norm: bool = True
    upsample: str = "transpose"

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.labels.split(",") if x.strip())

    @property
    def attention_scales(self) -> tuple[int, ...]:
        try:
            return tuple(sorted({int(x) for x in self.attention.split(",") if x.strip()}))
        except ValueError:
            raise ValueError(f"attention must list scales like '4,2', got {self.attention!r}") from None


PRESETS: dict[str, dict[str, int | str]] = {
    "paper": {},
    "small": {"width": 32, "res_blocks": 4, "critic_width": 32, "critic_max_width": 512},
    "tiny": {"width": 8, "res_blocks": 1, "critic_width": 8, "critic_max_width": 64},
}


def condition(config: SAGANConfig) -> Condition:
    return Condition("labels", config.label_names, False)


def check_config(config: SAGANConfig) -> None:
    check_image_size(config.image_size, config.downs)
    if len(config.label_names) < 2 or len(set(config.label_names)) != len(config.label_names):
        raise ValueError(f"labels must name at least two distinct expressions, got {config.labels!r}")
    if min(config.width, config.critic_width, config.res_blocks + 1, config.downs + 1) < 1:
        raise ValueError(f"invalid SA-GAN config {config}")
    if config.upsample not in ("transpose", "nearest"):
        raise ValueError(f"upsample must be 'transpose' or 'nearest', got {config.upsample!r}")
    bad = [k for k in config.attention_scales if k < 1 or k & (k - 1) or k > config.image_size // 2]
    if bad:
        raise ValueError(f"attention scales {bad} are not powers of two between 1 and image_size / 2")


class SelfAttention(nn.Module):
    """SAGAN's self-attention block over all positions of a (B,C,H,W) map.

    ``beta = softmax_j(q_i . k_j)`` with ``q = W_q x``, ``k = W_k x`` (C/8 channels each),
    ``o_i = sum_j beta_ij v_j`` with ``v = W_v x`` (C channels); output ``x + gamma * o``.
    ``gamma`` starts at 0: the block is the identity until training opens it.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(1, channels // 8)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def attention_map(self, x: Tensor) -> Tensor:
        """``beta`` (B, N, N), N = H*W: row i is where position i looks."""
        q = self.query(x).flatten(2)  # (B, C/8, N)
        k = self.key(x).flatten(2)
        return F.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        v = self.value(x).flatten(2)  # (B, C, N)
        o = torch.bmm(v, self.attention_map(x).transpose(1, 2)).view(b, c, h, w)
        return x + self.gamma * o


class SpectralNorm(nn.Module):
    """The parametrisation ``W -> W / sigma(W)`` (Miyato et al. 2018): ``sigma`` is the largest
    singular value of ``W`` (as a matrix over its output dimension ``dim``), estimated by power
    iteration on the buffers ``_u`` and ``_v``, one step per forward in training mode.

    torch's ``parametrizations.spectral_norm`` computes the same thing with ``vdot``, which the
    ONNX exporter cannot translate; this one uses a product and a sum, so exported models keep
    ``facexpr export-onnx``.
    """

    def __init__(self, weight: Tensor, dim: int = 0, eps: float = 1e-12) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        mat = self._matrix(weight.detach())
        h, w = mat.shape
        self.register_buffer("_u", F.normalize(mat.new_empty(h).normal_(0, 1), dim=0, eps=eps))
        self.register_buffer("_v", F.normalize(mat.new_empty(w).normal_(0, 1), dim=0, eps=eps))
        self._power(mat, 15)

    def _matrix(self, weight: Tensor) -> Tensor:
        if self.dim != 0:
            weight = weight.transpose(0, self.dim)
        return weight.flatten(1)

    @torch.no_grad()
    def _power(self, mat: Tensor, steps: int) -> None:
        for _ in range(steps):
            self._u.copy_(F.normalize(mat @ self._v, dim=0, eps=self.eps))
            self._v.copy_(F.normalize(mat.t() @ self._u, dim=0, eps=self.eps))

    def forward(self, weight: Tensor) -> Tensor:
        mat = self._matrix(weight)
        if self.training:
            self._power(mat.detach(), 1)
        # clones: a second forward's in-place update must not touch what the first one's
        # backward needs (D(real) and D(fake) in one loss)
        u, v = self._u.clone(), self._v.clone()
        return weight / (u * (mat @ v)).sum()


def _spectral(module: nn.Module) -> nn.Module:
    """Spectral normalisation on every conv of ``module`` (after its weights are initialised)."""
    for child in list(module.modules()):
        if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d)):
            dim = 1 if isinstance(child, nn.ConvTranspose2d) else 0  # the output channels
            parametrize.register_parametrization(child, "weight", SpectralNorm(child.weight, dim))
    return module


class SAGANGenerator(nn.Module):
    """``forward(image (B,3,H,W) in [-1,1], labels (B,L) one-hot) -> GeneratorOutput(result)``."""

    family = "sagan"

    def __init__(self, config: SAGANConfig) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        n = len(config.label_names)
        scales = config.attention_scales
        self.encoder, ch = conv_encoder(3 + n, config.width, config.downs)
        scale = 2**config.downs
        blocks: list[nn.Module] = [ResidualBlock(ch) for _ in range(config.res_blocks)]
        if scale in scales:
            blocks.append(SelfAttention(ch))
        self.bottleneck = nn.Sequential(*blocks)
        ups: list[nn.Module] = []
        for _ in range(config.downs):
            stage, ch = conv_decoder(ch, 1, config.upsample)
            scale //= 2
            ups.append(nn.Sequential(*stage, SelfAttention(ch)) if scale in scales else stage)
        self.decoder = nn.Sequential(*ups)
        self.head = nn.Sequential(nn.Conv2d(ch, 3, 7, 1, 3, bias=False), nn.Tanh())
        init_weights(self)
        if config.spectral_norm:
            _spectral(self)

    def forward(self, image: Tensor, cond: Tensor) -> GeneratorOutput:
        b, _, h, w = image.shape
        maps = cond.to(image.dtype).view(b, -1, 1, 1).expand(b, cond.shape[1], h, w)
        x = self.decoder(self.bottleneck(self.encoder(torch.cat([image, maps], dim=1))))
        return GeneratorOutput(result=self.head(x))


class SAGANCritic(nn.Module):
    """``forward(image) -> (B, K + 1)``: K class logits, then the extra output (the "generated"
    class logit, or the Wasserstein score; see the module docstring).

    Stride-2 4x4 convs with LeakyReLU(0.2), no normalisation (the WGAN-GP variant must not
    normalise over the batch), until a 2x2 map (as :class:`~facexpr.models.layers.PatchCritic`);
    self-attention after the stages whose output scale is in ``attention``; a head conv whose
    kernel covers the final map.
    """

    def __init__(self, config: SAGANConfig) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        size = config.image_size
        depth = max(1, size.bit_length() - 2)  # log2(size) - 1 stages: a 2x2 map at powers of two
        layers: list[nn.Module] = []
        ch_in, ch = 3, config.critic_width
        scales = config.attention_scales
        for i in range(depth):
            layers += [nn.Conv2d(ch_in, ch, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            if 2 ** (i + 1) in scales:
                layers.append(SelfAttention(ch))
            ch_in, ch = ch, min(ch * 2, config.critic_max_width)
        self.features = nn.Sequential(*layers)
        final = size >> depth
        self.head = nn.Conv2d(ch_in, len(config.label_names) + 1, final)
        init_weights(self)
        if config.spectral_norm:
            _spectral(self)

    def forward(self, image: Tensor) -> Tensor:
        return self.head(self.features(image)).flatten(1)


def build_critic(config: SAGANConfig) -> SAGANCritic:
    return SAGANCritic(config)
