"""ADM / improved-DDPM checkpoints (OpenAI guided-diffusion ``UNetModel`` layout) as diffusers ``UNet2DModel``.

The P2-weighting and ILVR AFHQ-Dog 256 models are distributed as raw ``torch.save`` state dicts of
guided-diffusion's ``UNetModel``. Everything in that network has an exact counterpart in diffusers'
``UNet2DModel`` (see :func:`unet_config`), so the weights are renamed, never approximated:

    ADM (guided-diffusion)                         diffusers UNet2DModel
    time_embed.0 / .2                              time_embedding.linear_1 / linear_2
    label_emb                                      class_embedding
    input_blocks.0.0                               conv_in
    input_blocks.N.0 (ResBlock)                    down_blocks.L.resnets.R
    input_blocks.N.1 (AttentionBlock)              down_blocks.L.attentions.R
    input_blocks.N.0 (ResBlock down / Downsample)  down_blocks.L.downsamplers.0
    middle_block.0 / .1 / .2                       mid_block.resnets.0 / attentions.0 / resnets.1
    output_blocks.N.0 / .1                         up_blocks.L'.resnets.R / attentions.R
    output_blocks.N.-1 (ResBlock up / Upsample)    up_blocks.L'.upsamplers.0
    out.0 / out.2                                  conv_norm_out / conv_out
  inside a ResBlock
    in_layers.0 / in_layers.2 / emb_layers.1       norm1 / conv1 / time_emb_proj
    out_layers.0 / out_layers.3 / skip_connection  norm2 / conv2 / conv_shortcut
  inside an AttentionBlock
    norm                                           group_norm
    qkv (1x1 conv1d, [3C, C, 1])                   to_q, to_k, to_v (linear, [C, C] each)
    proj_out (1x1 conv1d, [C, C, 1])               to_out.0 (linear, [C, C])

The fused ``qkv`` is split per head: with ``use_new_attention_order=False`` (QKVAttentionLegacy, the
P2/ILVR models) its 3C output channels are ordered [head, (q|k|v), channel]; with the new order
(QKVAttention) they are [(q|k|v), head, channel]. ADM scales q and k by ch^-1/4 each, diffusers
scales the logits by ch^-1/2: the same attention.

A learned-sigma model outputs [B, 2 * in_channels, H, W]: the first ``in_channels`` are eps, the
rest the variance interpolation v (oodgen's ``FrozenDDPM.eps`` keeps the first half).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from diffusers import UNet2DModel

log = logging.getLogger(__name__)

HINT = "check --model-config / the ADM constructor arguments"


class ADMConversionError(ValueError):
    """A checkpoint does not match the ADM configuration it is converted with (or cannot be read)."""


# guided-diffusion's script_util.create_model: channel_mult used when the flag is "" (by image size).
_DEFAULT_CHANNEL_MULT: dict[int, tuple[int, ...]] = {
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),  # improved-diffusion's CIFAR-10 / 32x32 default
}


@dataclass(frozen=True)
class ADMConfig:
    """The guided-diffusion ``UNetModel`` constructor arguments that fix the weights' layout.

    ``attention_resolutions`` are resolutions in pixels (16 = attention on 16x16 feature maps), the
    form of the ``--attention_resolutions 16`` script flag. guided-diffusion's constructor (and the
    test fixture's config) takes downsampling factors instead: factor d at image size S is the
    resolution S // d (S=256: factor 16 <-> 16 px; S=32: factor 2 <-> 16 px);
    :meth:`from_guided_diffusion_args` converts. Dropout, fp16 and gradient checkpointing do not
    change the weights and are not part of the config.
    """

    image_size: int  # image side in pixels (the UNet is resolution-agnostic, this is the training size)
    in_channels: int = 3  # image channels
    model_channels: int = 128  # base width ("--num_channels"); level widths are model_channels * channel_mult
    out_channels: int = 6  # 2 * in_channels with learned sigma (eps first, then the variance term), else in_channels
    num_res_blocks: int = 1  # ResBlocks per level on the way down (one more per level on the way up)
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map sides (pixels) with self-attention, e.g. (32, 16, 8)
    channel_mult: tuple[int, ...] = ()  # width multiplier per level; () = guided-diffusion's default for image_size
    num_head_channels: int = 64  # channels per attention head; -1 = use num_heads instead
    num_heads: int = -1  # attention heads when num_head_channels == -1 (ignored otherwise, as in ADM)
    num_heads_upsample: int = -1  # heads in the decoder's attention when num_head_channels == -1; -1 = num_heads
    use_scale_shift_norm: bool = True  # FiLM time conditioning: norm(h) * (1 + scale) + shift, else h + emb
    resblock_updown: bool = True  # down/upsample with ResBlocks (avg-pool / nearest inside), else strided / 3x3 convs
    learn_sigma: bool = True  # learned variance (improved DDPM): out_channels == 2 * in_channels
    use_new_attention_order: bool = False  # QKVAttention (split q,k,v before heads) instead of QKVAttentionLegacy
    num_classes: int | None = None  # class-conditional model (label_emb) with this many classes; None = unconditional

    def __post_init__(self) -> None:
        if not self.channel_mult:
            if self.image_size not in _DEFAULT_CHANNEL_MULT:
                raise ValueError(
                    f"no default channel_mult for image_size={self.image_size}; give channel_mult explicitly"
                )
            object.__setattr__(self, "channel_mult", _DEFAULT_CHANNEL_MULT[self.image_size])
        if any(float(m) != int(m) for m in self.channel_mult):
            raise ValueError(f"channel_mult={self.channel_mult} must be integers (fractional widths are not supported)")
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        if min(self.image_size, self.in_channels, self.model_channels, self.num_res_blocks, *self.channel_mult) < 1:
            raise ValueError(f"sizes, channels, num_res_blocks and channel_mult must be positive: {self}")
        expected_out = self.in_channels * (2 if self.learn_sigma else 1)
        if self.out_channels != expected_out:
            raise ValueError(
                f"out_channels={self.out_channels} contradicts learn_sigma={self.learn_sigma} with "
                f"in_channels={self.in_channels} (expected {expected_out})"
            )
        if self.num_head_channels == -1 and self.num_heads < 1:
            raise ValueError("set num_head_channels (channels per head) or num_heads (> 0)")
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(f"image_size={self.image_size} is not divisible by 2^{len(self.channel_mult) - 1}")
        reachable = {self.image_size // 2**level for level in range(len(self.channel_mult))}
        for r in self.attention_resolutions:
            if r not in reachable:
                log.warning(
                    "attention resolution %d px never occurs (levels: %s px); it adds no attention, as in ADM",
                    r, sorted(reachable, reverse=True),
                )

    @property
    def attention_downsample_factors(self) -> tuple[int, ...]:
        """``attention_resolutions`` in guided-diffusion's constructor form (image_size // resolution)."""
        return tuple(self.image_size // r for r in self.attention_resolutions)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_guided_diffusion_args(cls, args: Mapping[str, Any]) -> ADMConfig:
        """Config from guided-diffusion arguments in either of their two forms.

        - constructor form (``UNetModel(...)`` kwargs, e.g. the fixture's metadata ``config``):
          ``model_channels``, ``out_channels``, ``attention_resolutions`` as downsampling factors
          (a list, e.g. ``[2]`` at image_size 32 = 16 px);
        - script-flag form (``image_sample.py --num_channels 128 --learn_sigma True
          --attention_resolutions 32,16,8 ...`` as a dict): ``num_channels``, ``learn_sigma``,
          ``class_cond``, ``attention_resolutions`` in pixels (a comma string, int or list),
          ``channel_mult`` "" (default for the image size) or "1,1,2,2,4,4".

        A string ``attention_resolutions`` is always pixels; a list/int is read as downsampling
        factors when the dict is in constructor form (has ``model_channels`` or ``out_channels``),
        else as pixels. Values may be strings ("True", "128") as argparse leaves them. Missing keys
        take the :class:`ADMConfig` defaults (those of the P2 AFHQ-Dog model), not guided-diffusion's
        script defaults. Arguments that do not change the weights (dropout, use_fp16, diffusion
        flags...) are ignored.
        """
        a = dict(args)
        if "image_size" not in a:
            raise ADMConversionError(f"ADM arguments need image_size ({HINT})")
        if int(a.get("dims", 2)) != 2:
            raise ADMConversionError(f"only 2-D ADM models are supported (dims={a['dims']})")
        if not _as_bool(a.get("conv_resample", True)):
            raise ADMConversionError("conv_resample=False is not supported")
        image_size = int(a["image_size"])
        constructor_form = "model_channels" in a or "out_channels" in a
        kw: dict[str, Any] = {"image_size": image_size}
        if "in_channels" in a:
            kw["in_channels"] = int(a["in_channels"])
        in_ch = kw.get("in_channels", 3)
        if "model_channels" in a or "num_channels" in a:
            kw["model_channels"] = int(a.get("model_channels", a.get("num_channels")))
        if "num_res_blocks" in a:
            kw["num_res_blocks"] = int(a["num_res_blocks"])

        if "out_channels" in a:
            kw["out_channels"] = int(a["out_channels"])
            kw["learn_sigma"] = kw["out_channels"] == 2 * in_ch
            if "learn_sigma" in a and _as_bool(a["learn_sigma"]) != kw["learn_sigma"]:
                raise ADMConversionError(
                    f"out_channels={kw['out_channels']} contradicts learn_sigma={a['learn_sigma']} ({HINT})"
                )
        else:
            kw["learn_sigma"] = _as_bool(a.get("learn_sigma", cls.learn_sigma))
            kw["out_channels"] = in_ch * (2 if kw["learn_sigma"] else 1)

        if "attention_resolutions" in a:
            kw["attention_resolutions"] = _parse_attention(a["attention_resolutions"], image_size, constructor_form)
        if a.get("channel_mult") not in (None, ""):
            kw["channel_mult"] = _parse_int_tuple(a["channel_mult"], "channel_mult")
        for name in ("num_head_channels", "num_heads", "num_heads_upsample"):
            if a.get(name) is not None:
                kw[name] = int(a[name])
        for name in ("use_scale_shift_norm", "resblock_updown", "use_new_attention_order"):
            if name in a:
                kw[name] = _as_bool(a[name])
        if a.get("num_classes") is not None:
            kw["num_classes"] = int(a["num_classes"])
        elif _as_bool(a.get("class_cond", False)):
            kw["num_classes"] = 1000  # guided-diffusion's NUM_CLASSES (ImageNet)
        try:
            return cls(**kw)
        except ValueError as e:
            raise ADMConversionError(f"{e} ({HINT})") from None


def _as_bool(v: Any) -> bool:
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("true", "t", "yes", "y", "1"):
            return True
        if s in ("false", "f", "no", "n", "0", ""):
            return False
        raise ADMConversionError(f"expected a boolean, got {v!r}")
    return bool(v)


def _parse_int_tuple(v: Any, name: str) -> tuple[int, ...]:
    items = v.split(",") if isinstance(v, str) else (v if isinstance(v, (list, tuple)) else [v])
    try:
        out = []
        for x in items:
            f = float(x)
            if f != int(f):
                raise ValueError
            out.append(int(f))
        return tuple(out)
    except (TypeError, ValueError):
        raise ADMConversionError(f"{name}={v!r} must be integers (e.g. \"1,1,2,2,4,4\")") from None


def _parse_attention(v: Any, image_size: int, constructor_form: bool) -> tuple[int, ...]:
    vals = _parse_int_tuple(v, "attention_resolutions") if v not in ("", None) else ()
    if isinstance(v, str) or not constructor_form:
        return vals  # script flag: already pixels
    bad = [d for d in vals if d < 1 or image_size % d]
    if bad:
        raise ADMConversionError(
            f"attention_resolutions {list(vals)} (downsampling factors) do not divide image_size={image_size} ({HINT})"
        )
    return tuple(image_size // d for d in vals)


# Sources: jychoi118/P2-weighting README (sampling and training flags; "lightweight version (93M
# parameter) of ADM"; checkpoint afhq_p2.pt) and jychoi118/ilvr_adm README (flags "for sampling from
# above models", i.e. ffhq_10m.pt and afhq_dog_4m.pt). Both give: --attention_resolutions 16
# --image_size 256 --learn_sigma True --num_channels 128 --num_head_channels 64 --num_res_blocks 1
# --resblock_updown True --use_scale_shift_norm True (--channel_mult unset, so guided-diffusion's
# 256 default (1, 1, 2, 2, 4, 4)); use_new_attention_order is unset (False: legacy attention).
# The ILVR README shows these flags with the FFHQ path only; that afhq_dog_4m.pt shares them is an
# assumption (the README presents one flag set for both models). A mismatch fails loudly at load.
_ADM_256_LIGHT = dict(
    image_size=256, in_channels=3, model_channels=128, out_channels=6, num_res_blocks=1,
    attention_resolutions=(16,), channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64,
    use_scale_shift_norm=True, resblock_updown=True, learn_sigma=True, use_new_attention_order=False,
)
PRESETS: dict[str, ADMConfig] = {
    "afhq-dog-256-p2": ADMConfig(**_ADM_256_LIGHT),  # P2-weighting (Choi et al., CVPR 2022) afhq_p2.pt / afhq_baseline.pt
    "afhq-dog-256-ilvr": ADMConfig(**_ADM_256_LIGHT),  # ILVR (Choi et al., ICCV 2021) afhq_dog_4m.pt (assumed same flags)
}


def resolve_config(cfg: ADMConfig | str | Path | Mapping[str, Any]) -> ADMConfig:
    """An :class:`ADMConfig` from a config, a preset name, a JSON file of ADM arguments, or a dict of them."""
    if isinstance(cfg, ADMConfig):
        return cfg
    if isinstance(cfg, Mapping):
        return ADMConfig.from_guided_diffusion_args(cfg)
    if isinstance(cfg, (str, Path)):
        if str(cfg) in PRESETS:
            return PRESETS[str(cfg)]
        p = Path(cfg).expanduser()
        if p.is_file():
            try:
                args = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ADMConversionError(f"cannot read ADM config {p}: {e}") from None
            if not isinstance(args, dict):
                raise ADMConversionError(f"{p} must hold a JSON object of ADM constructor arguments")
            return ADMConfig.from_guided_diffusion_args(args)
        raise ADMConversionError(
            f"unknown ADM model config {str(cfg)!r}: give a preset ({', '.join(PRESETS)}) or a JSON file of the "
            f"ADM constructor arguments"
        )
    raise TypeError(f"ADM config must be an ADMConfig, preset name, JSON path or dict, not {type(cfg).__name__}")


# ---------------------------------------------------------------------------------------------
# architecture walk
# ---------------------------------------------------------------------------------------------

Kind = Literal["copy", "conv1d", "qkv"]


@dataclass(frozen=True)
class _Param:
    """One ADM parameter and where it goes."""

    adm: str  # ADM state-dict key
    targets: tuple[str, ...]  # diffusers key(s): one, or (to_q, to_k, to_v) for a fused qkv
    kind: Kind  # copy as is | conv1d (drop the trailing 1) | qkv (split per head)
    heads: int = 1  # attention heads (qkv only)


@dataclass
class _Walk:
    cfg: ADMConfig
    params: list[_Param] = field(default_factory=list)
    head_dims: set[int] = field(default_factory=set)

    def add(self, adm: str, dif: str, kind: Kind = "copy", heads: int = 1) -> None:
        for suffix in ("weight", "bias"):
            if kind == "qkv":
                targets = tuple(f"{dif}.{n}.{suffix}" for n in ("to_q", "to_k", "to_v"))
            else:
                targets = (f"{dif}.{suffix}",)
            self.params.append(_Param(f"{adm}.{suffix}", targets, kind, heads))

    def resblock(self, adm: str, dif: str, ch_in: int, ch_out: int) -> None:
        self.add(f"{adm}.in_layers.0", f"{dif}.norm1")
        self.add(f"{adm}.in_layers.2", f"{dif}.conv1")
        self.add(f"{adm}.emb_layers.1", f"{dif}.time_emb_proj")
        self.add(f"{adm}.out_layers.0", f"{dif}.norm2")
        self.add(f"{adm}.out_layers.3", f"{dif}.conv2")
        if ch_in != ch_out:
            self.add(f"{adm}.skip_connection", f"{dif}.conv_shortcut")

    def attention(self, adm: str, dif: str, ch: int, decoder: bool) -> None:
        c = self.cfg
        if c.num_head_channels != -1:
            if ch % c.num_head_channels:
                raise ADMConversionError(f"{ch} attention channels are not divisible by num_head_channels={c.num_head_channels}")
            heads = ch // c.num_head_channels
        else:
            heads = c.num_heads_upsample if decoder and c.num_heads_upsample != -1 else c.num_heads
            if ch % heads:
                raise ADMConversionError(f"{ch} attention channels are not divisible by {heads} heads")
        self.head_dims.add(ch // heads)
        self.add(f"{adm}.norm", f"{dif}.group_norm")
        self.add(f"{adm}.qkv", dif, "qkv", heads)
        self.add(f"{adm}.proj_out", f"{dif}.to_out.0", "conv1d")


def _walk(cfg: ADMConfig) -> _Walk:
    """Mirror guided-diffusion ``UNetModel.__init__``: every parameter in construction order."""
    w = _Walk(cfg)
    mc, mults, nrb = cfg.model_channels, cfg.channel_mult, cfg.num_res_blocks
    att = set(cfg.attention_resolutions)
    n_levels = len(mults)
    w.add("time_embed.0", "time_embedding.linear_1")
    w.add("time_embed.2", "time_embedding.linear_2")
    if cfg.num_classes is not None:
        w.params.append(_Param("label_emb.weight", ("class_embedding.weight",), "copy"))
    w.add("input_blocks.0.0", "conv_in")
    ch = mc * mults[0]
    chans = [ch]
    idx = 1
    for level, mult in enumerate(mults):
        has_att = cfg.image_size // 2**level in att
        for r in range(nrb):
            w.resblock(f"input_blocks.{idx}.0", f"down_blocks.{level}.resnets.{r}", ch, mult * mc)
            ch = mult * mc
            if has_att:
                w.attention(f"input_blocks.{idx}.1", f"down_blocks.{level}.attentions.{r}", ch, decoder=False)
            chans.append(ch)
            idx += 1
        if level != n_levels - 1:
            if cfg.resblock_updown:
                w.resblock(f"input_blocks.{idx}.0", f"down_blocks.{level}.downsamplers.0", ch, ch)
            else:
                w.add(f"input_blocks.{idx}.0.op", f"down_blocks.{level}.downsamplers.0.conv")
            chans.append(ch)
            idx += 1
    w.resblock("middle_block.0", "mid_block.resnets.0", ch, ch)
    w.attention("middle_block.1", "mid_block.attentions.0", ch, decoder=False)
    w.resblock("middle_block.2", "mid_block.resnets.1", ch, ch)
    idx = 0
    for level in reversed(range(n_levels)):
        up = n_levels - 1 - level
        has_att = cfg.image_size // 2**level in att
        for i in range(nrb + 1):
            skip = chans.pop()
            w.resblock(f"output_blocks.{idx}.0", f"up_blocks.{up}.resnets.{i}", ch + skip, mc * mults[level])
            ch = mc * mults[level]
            sub = 1
            if has_att:
                w.attention(f"output_blocks.{idx}.1", f"up_blocks.{up}.attentions.{i}", ch, decoder=True)
                sub = 2
            if level and i == nrb:
                if cfg.resblock_updown:
                    w.resblock(f"output_blocks.{idx}.{sub}", f"up_blocks.{up}.upsamplers.0", ch, ch)
                else:
                    w.add(f"output_blocks.{idx}.{sub}.conv", f"up_blocks.{up}.upsamplers.0.conv")
            idx += 1
    w.add("out.0", "conv_norm_out")
    w.add("out.2", "conv_out")
    return w


def adm_key_map(cfg: ADMConfig) -> dict[str, tuple[str, ...]]:
    """ADM state-dict key -> the diffusers key(s) it becomes (three for a fused ``qkv``), in ADM order."""
    return {p.adm: p.targets for p in _walk(cfg).params}


def unet_config(cfg: ADMConfig) -> dict[str, Any]:
    """``UNet2DModel(**kwargs)`` arguments of the ADM network described by ``cfg``.

    Raises ADMConversionError where UNet2DModel cannot express the network: a first level whose
    width is not ``model_channels`` (the 512 model's channel_mult 0.5; diffusers sizes the timestep
    features by the first level), or attention layers with different head widths (diffusers has
    one ``attention_head_dim``; ADM with ``num_heads`` fixed and attention at several widths).
    """
    walk = _walk(cfg)
    if cfg.channel_mult[0] != 1:
        raise ADMConversionError(f"channel_mult[0]={cfg.channel_mult[0]} != 1 cannot be expressed by diffusers UNet2DModel")
    if len(walk.head_dims) != 1:
        raise ADMConversionError(
            f"attention head widths {sorted(walk.head_dims)} differ between layers; UNet2DModel has one "
            f"attention_head_dim (use num_head_channels, or attention at one width only)"
        )
    att = set(cfg.attention_resolutions)
    has_att = [cfg.image_size // 2**level in att for level in range(len(cfg.channel_mult))]
    if cfg.resblock_updown:
        down = ["AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in has_att]
        up = ["AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(has_att)]
    else:
        down = ["AttnDownBlock2D" if a else "DownBlock2D" for a in has_att]
        up = ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_att)]
    resample = "resnet" if cfg.resblock_updown else "conv"
    return {
        "sample_size": cfg.image_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",  # ADM timestep_embedding: [cos, sin], freqs exp(-ln(1e4) i / half)
        "time_embedding_dim": 4 * cfg.model_channels,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": tuple(down),
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": tuple(up),
        "block_out_channels": tuple(cfg.model_channels * m for m in cfg.channel_mult),
        "layers_per_block": cfg.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "downsample_type": resample,
        "upsample_type": resample,
        "dropout": 0.0,
        "act_fn": "silu",
        "attention_head_dim": next(iter(walk.head_dims)),
        "norm_num_groups": 32,
        "attn_norm_num_groups": 32,  # else the mid-block attention has no GroupNorm with scale_shift
        "norm_eps": 1e-5,
        "resnet_time_scale_shift": "scale_shift" if cfg.use_scale_shift_norm else "default",
        "add_attention": True,
        "num_class_embeds": cfg.num_classes,
    }


def build_unet(cfg: ADMConfig, device: str | torch.device | None = None) -> UNet2DModel:
    """A randomly initialised ``UNet2DModel`` for ``cfg``; ``device="meta"`` allocates nothing (shapes, counts)."""
    from diffusers import UNet2DModel

    kwargs = unet_config(cfg)
    if device is None:
        return UNet2DModel(**kwargs)
    with torch.device(device):
        return UNet2DModel(**kwargs)


# ---------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------


def _expected_adm_shape(p: _Param, dif_shapes: Mapping[str, torch.Size]) -> tuple[int, ...]:
    s = tuple(dif_shapes[p.targets[0]])
    if p.kind == "copy":
        return s
    if p.kind == "conv1d":
        return s + (1,) if len(s) == 2 else s
    return (3 * s[0],) + s[1:] + ((1,) if len(s) == 2 else ())  # qkv


def _split_qkv(t: torch.Tensor, heads: int, new_order: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[3C, C, 1] weight or [3C] bias -> q, k, v ([C, C] or [C]), heads laid out as diffusers expects."""
    t = t.reshape(t.shape[0], -1) if t.dim() == 3 else t  # conv1d weight [3C, C, 1] -> [3C, C]
    c3 = t.shape[0]
    ch = c3 // (3 * heads)
    rest = t.shape[1:]
    if new_order:  # QKVAttention: [(q|k|v), head, ch]
        g = t.reshape(3, heads, ch, *rest)
        parts = (g[0], g[1], g[2])
    else:  # QKVAttentionLegacy: [head, (q|k|v), ch]
        g = t.reshape(heads, 3, ch, *rest)
        parts = (g[:, 0], g[:, 1], g[:, 2])
    return tuple(x.reshape(heads * ch, *rest).clone() for x in parts)  # type: ignore[return-value]


def convert_state_dict(sd: Mapping[str, torch.Tensor], cfg: ADMConfig) -> dict[str, torch.Tensor]:
    """Rename (and split / reshape) an ADM state dict into ``UNet2DModel(**unet_config(cfg))`` keys.

    ``sd``: the raw ADM ``state_dict`` (no wrapper, no ``module.`` prefix; see
    :func:`extract_adm_state_dict`). Tensors keep their dtype. Raises ADMConversionError naming the
    first missing ADM key (in the network's order), else the first unexpected one, else the first
    key whose shape differs from what ``cfg`` implies (with both shapes).
    """
    walk = _walk(cfg)
    params = walk.params
    expected = {p.adm for p in params}
    missing = next((p.adm for p in params if p.adm not in sd), None)
    unexpected = next((k for k in sd if k not in expected), None)
    if missing is not None or unexpected is not None:
        parts = []
        if missing is not None:
            parts.append(f"missing ADM key {missing!r}")
        if unexpected is not None:
            parts.append(f"unexpected ADM key {unexpected!r}")
        n_miss = sum(p.adm not in sd for p in params)
        n_unexp = sum(k not in expected for k in sd)
        raise ADMConversionError(
            f"checkpoint does not match the ADM config: {' and '.join(parts)} "
            f"({n_miss} missing, {n_unexp} unexpected in all); {HINT}"
        )
    dif_shapes = {k: v.shape for k, v in build_unet(cfg, "meta").state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for p in params:
        t = sd[p.adm]
        want = _expected_adm_shape(p, dif_shapes)
        if tuple(t.shape) != want:
            raise ADMConversionError(
                f"shape mismatch for ADM key {p.adm!r}: checkpoint {tuple(t.shape)}, config expects {want}; {HINT}"
            )
        if p.kind == "copy":
            out[p.targets[0]] = t
        elif p.kind == "conv1d":
            out[p.targets[0]] = t.reshape(dif_shapes[p.targets[0]]).clone()
        else:
            for name, part in zip(p.targets, _split_qkv(t, p.heads, cfg.use_new_attention_order)):
                out[name] = part
    if set(out) != set(dif_shapes):  # a bug in the walk, not in the checkpoint
        diff = sorted(set(out) ^ set(dif_shapes))
        raise AssertionError(f"internal ADM key map does not cover UNet2DModel exactly: {diff[:5]}")
    return out


_WRAPPER_KEYS = ("ema", "ema_model", "model_ema", "state_dict", "model", "net", "module")
_PROBE = "time_embed.0.weight"


def extract_adm_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The ADM state dict inside a loaded checkpoint.

    Accepts a plain state dict, one wrapped under ``ema`` / ``state_dict`` / ``model`` (...) keys
    (EMA preferred), and keys carrying a prefix such as ``module.`` (DDP) or ``state_dict.`` (the
    fixture's flat safetensors, where other tensors sit beside the weights).
    """
    if not isinstance(obj, Mapping):
        raise ADMConversionError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    if _PROBE not in obj:
        for k in _WRAPPER_KEYS:
            if isinstance(obj.get(k), Mapping):
                log.info("using the state dict under %r", k)
                return extract_adm_state_dict(obj[k])
        prefixes = [k[: -len(_PROBE)] for k in obj if isinstance(k, str) and k.endswith("." + _PROBE)]
        if len(prefixes) > 1:
            raise ADMConversionError(f"several ADM state dicts in one checkpoint (key prefixes {prefixes}); extract one first")
        if not prefixes:
            keys = ", ".join(list(map(str, obj))[:5])
            raise ADMConversionError(
                f"no ADM state dict found (no {_PROBE!r} key; first keys: {keys}); is this a guided-diffusion checkpoint?"
            )
        pre = prefixes[0]
        log.info("stripping key prefix %r", pre)
        obj = {k[len(pre):]: v for k, v in obj.items() if isinstance(k, str) and k.startswith(pre)}
    bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ADMConversionError(f"state dict entry {bad!r} is a {type(obj[bad]).__name__}, not a tensor")
    return dict(obj)


def _read_checkpoint(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, non-weights pickle, ...: one clear message
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ADMConversionError(f"cannot read checkpoint {path}: {type(e).__name__}: {first}") from None


def load_adm_checkpoint(path: str | Path, cfg: ADMConfig | str | Mapping[str, Any]) -> UNet2DModel:
    """Load an ADM checkpoint (``.pt``/``.pth``/``.ckpt`` torch pickle, or ``.safetensors``) as a ``UNet2DModel``.

    ``cfg``: an :class:`ADMConfig`, a preset name (:data:`PRESETS`), a JSON file of ADM arguments, or
    a dict of them. Returns the model in float32 on the CPU, eval mode, ``requires_grad`` False.
    Its forward takes x [B, in_channels, H, W] and integer timesteps [B] (0..999) and returns
    ``.sample`` [B, out_channels, H, W]; with learned sigma eps is ``sample[:, :in_channels]``.
    """
    path = Path(path).expanduser()
    config = resolve_config(cfg)
    sd = extract_adm_state_dict(_read_checkpoint(path))
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    converted = convert_state_dict(sd, config)
    unet = build_unet(config, "meta")
    unet.load_state_dict(converted, strict=True, assign=True)
    left = [n for n, t in [*unet.named_parameters(), *unet.named_buffers()] if t.is_meta]
    if left:
        raise AssertionError(f"tensors left uninitialised after loading: {left[:5]}")
    unet.eval().requires_grad_(False)
    n = sum(p.numel() for p in unet.parameters())
    log.info("loaded ADM checkpoint %s as UNet2DModel (%.1fM parameters)", path.name, n / 1e6)
    return unet


def save_as_diffusers(
    unet: UNet2DModel, out_dir: str | Path, alphas_cumprod_config: Mapping[str, Any] | None = None
) -> Path:
    """Write ``unet`` as a DDPMPipeline folder (``model_index.json``, ``unet/``, ``scheduler/``).

    The scheduler is DDPM's linear betas 1e-4..0.02 over 1000 steps (the P2 / ILVR training
    schedule), ``clip_sample`` False, variance ``learned_range`` for a learned-sigma UNet;
    ``alphas_cumprod_config`` overrides DDPMScheduler arguments (``beta_schedule``,
    ``num_train_timesteps``, ``trained_betas``...). Returns the folder.
    """
    from diffusers import DDPMPipeline, DDPMScheduler

    learned = unet.config.out_channels == 2 * unet.config.in_channels
    sched_kw: dict[str, Any] = {
        "num_train_timesteps": 1000,
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "clip_sample": False,
        "prediction_type": "epsilon",
        "variance_type": "learned_range" if learned else "fixed_small",
    }
    sched_kw.update(alphas_cumprod_config or {})
    out = Path(out_dir)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**sched_kw)).save_pretrained(out, safe_serialization=True)
    log.info("wrote DDPMPipeline folder %s", out)
    return out

