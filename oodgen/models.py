"""Loading frozen DDPMs: diffusers folders (pipeline or flat layout), hub ids, ADM checkpoints.

A loaded model is a :class:`FrozenDDPM`: the UNet (eval mode, no gradients), its noise schedule
alpha_bar_t in float64 recomputed from the scheduler config, and a noise predictor ``eps(x, t)``
that hides the model's quirks (learned-sigma outputs, v- or x0-prediction, reduced precision).

Layouts understood for a folder (local, or a hub snapshot):
    pipeline  ``model_index.json``, ``unet/config.json`` + weights, ``scheduler/scheduler_config.json``
    flat      ``config.json`` (UNet2DModel) + weights and ``scheduler_config.json`` side by side
              (the layout of ``google/ddpm-ema-church-256`` and its siblings)
A file ``*.pt`` / ``*.pth`` / ``*.ckpt`` (or a single ``*.safetensors``) is an ADM / improved-DDPM
checkpoint and needs ``model_config`` (a preset name of :mod:`oodgen.adm`, or its arguments).

On CPU the UNet runs in channels_last (:meth:`FrozenDDPM.use_channels_last`, measured faster there) and, by default
(``dtype="auto"``), in bfloat16 where the CPU has native bf16 (:func:`resolve_dtype`).

Fast path (opt in): :meth:`FrozenDDPM.compile` (``load_model(..., compile=True)``, ``--compile``) runs the
UNet through ``torch.compile``, in channels_last on CUDA. Where that is unavailable (``OODGEN_NO_COMPILE=1``,
Hugging Face ZeroGPU, no compiler) or fails, a warning is logged and the plain forward runs instead.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from .config import DTYPE_CHOICES
from .fsutil import cache_dir
from .schedule import alphas_cumprod_from_config

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = REPO_ROOT / "assets"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the cause and the fix."""


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the model registry."""

    key: str  # name accepted by --model and shown in the app
    source: str  # local folder (bundled) or Hugging Face hub repo id
    resolution: int  # image side in pixels
    description: str  # one line for pickers and --help
    bundled: bool = False  # ships with oodgen (works offline)


# The bundled 64x64 colour model with the smoother prior (closer dust maps on the tuning data, two training
# seeds; README "Sample quality"); OODGEN_DEFAULT_MODEL names another (the browser tests use the fast
# oodgen-faces-32: they exercise the app's flows, tests/test_models.py and test_cli.py the default model).
DEFAULT_MODEL = os.environ.get("OODGEN_DEFAULT_MODEL") or "oodgen-photos-64-smooth"
REGISTRY: dict[str, ModelSpec] = {
    s.key: s
    for s in (
        ModelSpec("oodgen-photos-64-smooth", str(ASSETS / "models" / "oodgen-photos-64-smooth"), 64,
                  "bundled default: oodgen-photos-64 trained longer on partly blurred crops, more low-t steps (closer dust maps)", bundled=True),
        ModelSpec("oodgen-photos-64", str(ASSETS / "models" / "oodgen-photos-64"), 64,
                  "bundled 64x64 colour DDPM trained by oodgen on natural photographs and faces (the previous default)", bundled=True),
        ModelSpec("oodgen-faces-32", str(ASSETS / "models" / "oodgen-faces-32"), 32,
                  "bundled 32x32 DDPM trained by oodgen on grey LFW face crops (the first default; fast)", bundled=True),
        ModelSpec("google/ddpm-ema-church-256", "google/ddpm-ema-church-256", 256, "DDPM, LSUN church 256x256 (Ho et al.), 114M params"),
        ModelSpec("google/ddpm-ema-celebahq-256", "google/ddpm-ema-celebahq-256", 256, "DDPM, CelebA-HQ faces 256x256, 114M params"),
        ModelSpec("google/ddpm-ema-bedroom-256", "google/ddpm-ema-bedroom-256", 256, "DDPM, LSUN bedroom 256x256, 114M params"),
    )
}

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def native_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX512-BF16 or AMX-BF16), as torch reports it."""
    get = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.10
    flags = get() if get is not None else {}
    return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """The UNet precision ``dtype`` means on ``device``: ``auto`` is bfloat16 on a CPU with native bf16
    (:func:`native_bf16`), float32 elsewhere (CUDA, MPS, CPUs without it); other names are returned as given."""
    if dtype not in DTYPE_CHOICES:
        raise ModelLoadError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_CHOICES)}")
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.type == "cpu" and native_bf16() else "float32"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; anything else is passed to ``torch.device``."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ModelLoadError(f"unknown device {device!r} ({e}); use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use --device cpu or auto")
    return dev


def is_out_of_memory(e: BaseException) -> bool:
    """True for a device out-of-memory error (CUDA, MPS, or a compiler failure caused by one)."""
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def compile_unavailable(device: torch.device, backend: Union[str, Callable[..., Any]] = "inductor") -> Optional[str]:
    """Why ``torch.compile`` should not be used for a model on ``device``, or None when it may be tried.

    Checked: ``OODGEN_NO_COMPILE`` (any value but empty/0/false/no), Hugging Face ZeroGPU (``SPACES_ZERO_GPU``
    set: the GPU exists only inside ``@spaces.GPU`` calls, so nothing compiled for it outlives a call), a torch
    without ``torch.compile``, and the inductor backend's toolchain (a C++ compiler on CPU, triton on CUDA).
    """
    if os.environ.get("OODGEN_NO_COMPILE", "").strip().lower() not in ("", "0", "false", "no"):
        return "OODGEN_NO_COMPILE is set"
    if os.environ.get("SPACES_ZERO_GPU"):
        return "running on Hugging Face ZeroGPU (SPACES_ZERO_GPU is set)"
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if backend == "inductor":
        if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c):
            return "the inductor backend needs a C++ compiler on CPU (g++ or clang++)"
        if device.type == "cuda" and importlib.util.find_spec("triton") is None:
            return "the inductor backend needs triton on CUDA"
    return None


@dataclass
class FrozenDDPM:
    """A frozen noise predictor with its schedule. ``eps`` is the only way the engine calls the net."""

    unet: torch.nn.Module  # diffusers UNet2DModel, eval mode, requires_grad False
    alphas_cumprod: np.ndarray  # alpha_bar_t, [T] float64
    name: str  # registry key, hub id or path
    resolution: int  # image side in pixels
    channels: int  # image channels (3 for RGB)
    device: torch.device  # where the UNet lives
    dtype: torch.dtype  # UNet compute dtype; inputs and outputs of eps stay float32
    prediction_type: str = "epsilon"  # epsilon | v_prediction | sample, from the scheduler config
    _compiled: Optional[Callable[..., Any]] = field(default=None, init=False, repr=False, compare=False)  # torch.compile(unet), see compile()
    _channels_last: bool = field(default=False, init=False, repr=False, compare=False)  # inputs go in as channels_last
    _cudagraphs: bool = field(default=False, init=False, repr=False, compare=False)  # compiled with CUDA graphs

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    @property
    def is_compiled(self) -> bool:
        """Whether ``eps`` runs the torch.compile'd UNet (False after a fallback to the plain forward)."""
        return self._compiled is not None

    def compile(self, backend: Union[str, Callable[..., Any]] = "inductor", mode: Optional[str] = None) -> "FrozenDDPM":
        """Run the UNet through ``torch.compile`` from now on; in place (like ``nn.Module.compile``), returns self.

        Each batch shape compiles once, on its first call (seconds on a GPU, about a minute for the bundled
        model on 2 CPU cores), so it pays off on long runs; the generated kernels are kept in
        ``cache_dir()/inductor`` (``$TORCHINDUCTOR_CACHE_DIR`` if set), so a later process on the same machine
        and model skips most of that cost. On CUDA the UNet and its inputs switch to
        channels_last. ``backend`` and ``mode`` go to ``torch.compile`` (``mode="reduce-overhead"`` adds CUDA
        graphs). Where compile is unavailable (:func:`compile_unavailable`) or fails, at once or at the first
        call, a warning is logged and the plain forward is used; results agree with it to float32 rounding.
        """
        reason = compile_unavailable(self.device, backend)
        if reason is None:
            # inductor's on-disk caches (FX graphs, autotuning) in oodgen's per-machine cache, not /tmp: a later
            # process reuses the generated kernels instead of compiling again (it still traces, seconds)
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
            try:
                compiled = torch.compile(self.unet, backend=backend, mode=mode, dynamic=False)
            except Exception as e:  # e.g. a Python version dynamo does not support yet
                reason = f"torch.compile raised {type(e).__name__}: {_first_line(e)}"
        if reason is not None:
            log.warning("%s: torch.compile not used (%s); running the plain UNet forward", self.name, reason)
            return self
        if self.device.type == "cuda":
            self.use_channels_last()
        self._compiled = compiled
        self._cudagraphs = self.device.type == "cuda" and mode in ("reduce-overhead", "max-autotune")
        log.info("%s: UNet compiled with torch.compile(backend=%s, mode=%s)", self.name, backend, mode)
        return self

    def use_channels_last(self) -> "FrozenDDPM":
        """Run the UNet in channels_last (NHWC) memory format from now on; in place, returns self. The default on CPU,
        where oneDNN's convolutions run faster so (the bundled model on 2 cores: about 1.15x in float32 and 1.2x in
        bfloat16, README "Speed"); eps still takes and returns contiguous float32 tensors."""
        self.unet.to(memory_format=torch.channels_last)
        self._channels_last = True
        return self

    def _forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Raw UNet output [B, C_out, H, W] for x [B, C, H, W] in the UNet dtype and timesteps t [B]."""
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._compiled is not None:
            if self._cudagraphs:  # the previous call's output may be overwritten: it has been consumed by then
                torch.compiler.cudagraph_mark_step_begin()
            try:
                return self._compiled(x, t).sample
            except Exception as e:
                if is_out_of_memory(e):
                    raise  # the engine halves the batch and retries (compiling again for the new shape)
                log.warning("%s: the compiled UNet failed (%s: %s); falling back to the plain forward",
                            self.name, type(e).__name__, _first_line(e))
                self._compiled = None
        return self.unet(x, t).sample

    @torch.no_grad()
    def eps(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Predicted noise eps_theta(x_t, t) [B, C, H, W] float32 for x [B, C, H, W] float32 on ``device``."""
        tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        out = self._forward(x.to(self.dtype), tt).to(torch.float32, memory_format=torch.contiguous_format)
        if out.shape[1] == 2 * self.channels:  # learned sigma (improved DDPM / ADM): eps is the first half
            out = out[:, : self.channels]
        if self.prediction_type == "epsilon":
            return out
        a = float(self.alphas_cumprod[t])
        if self.prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1-a) x0  =>  eps = sqrt(a) v + sqrt(1-a) x
            return out * a**0.5 + x * (1 - a) ** 0.5
        if self.prediction_type == "sample":  # x0 prediction
            return (x - out * a**0.5) / (1 - a) ** 0.5
        raise ModelLoadError(f"prediction_type {self.prediction_type!r} is not supported")

    def info(self) -> dict[str, Any]:
        """Plain facts for the UI and metadata."""
        return {
            "name": self.name,
            "resolution": self.resolution,
            "channels": self.channels,
            "parameters": self.num_parameters,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "num_train_timesteps": self.num_train_timesteps,
            "prediction_type": self.prediction_type,
            "compiled": self.is_compiled,
        }


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from None


def find_layout(folder: Path) -> tuple[str, Path, Path]:
    """(layout, unet folder, scheduler config file) of a diffusers model folder."""
    if (folder / "unet" / "config.json").is_file():
        sched = folder / "scheduler" / "scheduler_config.json"
        return "pipeline", folder / "unet", sched
    if (folder / "config.json").is_file():
        return "flat", folder, folder / "scheduler_config.json"
    raise ModelLoadError(
        f"{folder} is not a diffusers model folder: expected unet/config.json (DDPMPipeline layout) "
        f"or config.json + scheduler_config.json (flat layout)"
    )


def _hub_snapshot(repo_id: str) -> Path:
    """Local folder of a hub model (from the cache when offline). Raises ModelLoadError with the fix."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "*.bin", "unet/*", "scheduler/*"],
            ignore_patterns=["*.msgpack", "*.h5", "*.onnx", "*.ckpt", "images/*"],
        )
    except Exception as e:  # offline, DNS failure, 404, gated repo...: one clear message
        cause = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise ModelLoadError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({cause}). If this machine has no network, "
            f"download it elsewhere with `huggingface-cli download {repo_id} --local-dir DIR`, copy DIR here "
            f"and pass it as --model DIR (or put it in the hub cache, HF_HOME)"
        ) from None
    return Path(path)


def _load_diffusers_folder(folder: Path, torch_dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, dict]:
    from diffusers import UNet2DModel

    layout, unet_dir, sched_file = find_layout(folder)
    cfg = _read_json(unet_dir / "config.json")
    if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ModelLoadError(f"{unet_dir} holds a {cfg.get('_class_name')}; oodgen needs an unconditional UNet2DModel (pixel-space DDPM)")
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, torch_dtype=torch_dtype, low_cpu_mem_usage=False)
    except Exception as e:
        raise ModelLoadError(f"cannot load the UNet from {unet_dir}: {e}") from None
    if sched_file.is_file():
        sched_cfg = _read_json(sched_file)
    else:
        log.warning("%s has no scheduler config; assuming DDPM linear betas 1e-4..0.02 over 1000 steps", folder)
        sched_cfg = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
    log.info("loaded %s layout from %s", layout, folder)
    return unet, sched_cfg


def _load_checkpoint(path: Path, model_config: Any) -> tuple[torch.nn.Module, dict]:
    from . import adm

    if model_config is None:
        raise ModelLoadError(
            f"{path.name} is a raw checkpoint: say which architecture it is with --model-config "
            f"(one of {', '.join(adm.PRESETS)}, or a JSON file of the ADM constructor arguments)"
        )
    try:
        unet = adm.load_adm_checkpoint(path, model_config)
    except (adm.ADMConversionError, ValueError, OSError, RuntimeError) as e:
        raise ModelLoadError(f"cannot load the ADM checkpoint {path}: {e}") from None
    # ADM / improved-DDPM checkpoints of this family use the DDPM linear schedule
    sched_cfg = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
    return unet, sched_cfg


def load_model(
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    model_config: Any = None,
    compile: bool = False,
    local: bool = True,
) -> FrozenDDPM:
    """Load a frozen DDPM by registry key, local folder, checkpoint file or hub id.

    ``model_config`` is only for raw ADM checkpoints (preset name, dict or JSON file path).
    ``local=False`` takes a name that is not a registry key as a hub id only, never as a path on this machine.
    ``compile`` runs the UNet through torch.compile (:meth:`FrozenDDPM.compile`; plain where unavailable).
    """
    dev = resolve_device(device)
    torch_dtype = DTYPES[resolve_dtype(dtype, dev)]
    spec = REGISTRY.get(model)
    source = spec.source if spec else model
    path = Path(source).expanduser()
    if not local and spec is None:
        unet, sched_cfg = _load_diffusers_folder(_hub_snapshot(source), torch_dtype)
    elif path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
        unet, sched_cfg = _load_checkpoint(path, model_config)
    elif path.is_dir():
        unet, sched_cfg = _load_diffusers_folder(path, torch_dtype)
    elif spec is not None and spec.bundled:
        raise ModelLoadError(f"the bundled model folder {path} is missing; run `python scripts/train_default_model.py` to rebuild it")
    elif path.suffix in CHECKPOINT_SUFFIXES or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelLoadError(f"no model at {source!r}: give a registry name ({', '.join(REGISTRY)}), a diffusers folder, a checkpoint file or a hub id")
    else:
        unet, sched_cfg = _load_diffusers_folder(_hub_snapshot(source), torch_dtype)

    try:
        alphas_cumprod = alphas_cumprod_from_config(sched_cfg)
    except ValueError as e:
        raise ModelLoadError(f"{model}: {e}") from None
    prediction_type = sched_cfg.get("prediction_type", "epsilon")
    if sched_cfg.get("clip_sample"):
        log.info("%s: scheduler config has clip_sample=true; oodgen never clips (exact inversion needs it off)", model)

    unet.eval().requires_grad_(False)
    unet.to(dev)
    if next(unet.parameters()).dtype != torch_dtype:
        unet.to(torch_dtype)
    cfg = unet.config
    sample_size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    frozen = FrozenDDPM(
        unet=unet,
        alphas_cumprod=alphas_cumprod,
        name=model,
        resolution=int(sample_size),
        channels=int(cfg.in_channels),
        device=dev,
        dtype=torch_dtype,
        prediction_type=prediction_type,
    )
    if dev.type == "cpu":
        frozen.use_channels_last()
    return frozen.compile() if compile else frozen
