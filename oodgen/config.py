"""Settings shared by the command line and the app: small frozen dataclasses, one comment per field.

Every settings class saves and loads itself with one pair of functions (:class:`JSONSettings`):
``to_json()`` gives a plain dict of every field, ``from_json(d)`` rebuilds the settings, taking a
missing key's default and refusing an unknown key with one clear error. Latent files, run and
generated-set records, job files and the app all go through this pair.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Mapping, Optional, TypeVar

Method = Literal["slerp", "lerp", "gaussian"]
METHODS: tuple[str, ...] = ("slerp", "lerp", "gaussian")
PAIRINGS: tuple[str, ...] = ("random", "nearest")
NOISE_MODELS: tuple[str, ...] = ("none", "match", "sky")
CALIBRATIONS: tuple[str, ...] = ("none", "quantiles")
CENTRES: tuple[str, ...] = ("cloud", "origin")
# UNet precisions; auto = bfloat16 on a CPU with native bf16, float32 elsewhere (models.resolve_dtype)
DTYPE_CHOICES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")

S = TypeVar("S", bound="JSONSettings")


class JSONSettings:
    """``to_json``/``from_json`` of a settings dataclass (in the manner of diffusers' ``to_json_string``/``from_config``)."""

    def to_json(self) -> dict[str, Any]:
        """Every field, as plain JSON values."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[S], data: Optional[Mapping[str, Any]]) -> S:
        """The settings saved by :meth:`to_json`; a missing key takes its default, an unknown key is a ValueError."""
        data = dict(data or {})
        known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(known)}")
        return cls(**data)


@dataclass(frozen=True)
class DDIMSettings(JSONSettings):
    """How images are mapped to latents and back."""

    t_end: int = 300  # operating timestep of the latent space; chosen on seeded tuning data (README "Sample quality"); paper: 800-900 with a 93M-parameter model
    steps: int = 50  # DDIM steps between 0 and t_end, one model call each (authors: 80)
    batch_size: int = 0  # images per model call; 0 = auto (engine.auto_batch_size: measured once per machine on CPU, sized to free memory on CUDA); halved on out-of-memory

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= self.t_end:
            raise ValueError(f"steps={self.steps} must be between 1 and t_end={self.t_end}")
        if self.batch_size < 0:
            raise ValueError(f"batch_size={self.batch_size} must be at least 1, or 0 for auto")


@dataclass(frozen=True)
class GenerationSettings(JSONSettings):
    """How new latents are drawn in the out-of-domain region and decoded."""

    method: Method = "slerp"  # slerp | lerp between two inverted latents, or gaussian (fitted to all of them)
    alpha: float = 0.5  # interpolation weight of the second latent (paper: mid-path ~0.5 trades quality vs diversity)
    eta: float = 0.0  # DDIM stochasticity while decoding (paper's "bandwidth"); 0.5 made clumpy, burned cores in the search
    seed: int = 0  # seeds pair choice, Gaussian draws and eta noise
    per_dim_variance: bool = False  # gaussian: per-dimension variance instead of one scalar variance
    geometric_filter: bool = False  # keep only draws whose distances/angles to the inverted set match its geometry
    filter_tolerance: float = 0.05  # relative tolerance of the geometric filter
    pairing: str = "random"  # interpolation pairs: random, or nearest (j among the `neighbours` latents closest to i); random won on tuning data once slerp turns about the cloud centre
    neighbours: int = 5  # nearest pairing: how many nearest latents j is drawn from
    alpha_spread: float = 0.0  # alpha drawn uniformly in [alpha - spread, alpha + spread] (clipped to [0, 1])
    clusters: int = 1  # gaussian: one Gaussian per k-means cluster of the latents, drawn in proportion to cluster size
    centre: str = "cloud"  # slerp turns about the OOD cloud's centre (mean of the inverted latents), or the origin (authors' code; burns cores, blackens skies)
    noise: str = "match"  # none; match: add white noise up to the sources' pixel noise; sky: also shift to the sources' sky level (border median)
    calibration: str = "quantiles"  # after the noise model: quantiles maps each channel onto its sources' interpolated intensity distribution (1-D optimal transport, pixel ranks kept); none

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {', '.join(METHODS)}")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing={self.pairing!r} is not one of {', '.join(PAIRINGS)}")
        if self.centre not in CENTRES:
            raise ValueError(f"centre={self.centre!r} is not one of {', '.join(CENTRES)}")
        if self.noise not in NOISE_MODELS:
            raise ValueError(f"noise={self.noise!r} is not one of {', '.join(NOISE_MODELS)}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration={self.calibration!r} is not one of {', '.join(CALIBRATIONS)}")
        if self.neighbours < 1 or self.clusters < 1:
            raise ValueError(f"neighbours={self.neighbours} and clusters={self.clusters} must be at least 1")
        if not 0.0 <= self.alpha_spread <= 0.5:
            raise ValueError(f"alpha_spread={self.alpha_spread} must be in [0, 0.5]")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must be in [0, 1]")
        if self.eta < 0:
            raise ValueError(f"eta={self.eta} must be >= 0")
