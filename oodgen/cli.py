"""Command line: ``python -m oodgen {models,invert,reconstruct,generate,...}``.

Every command uses the bundled model unless ``--model`` says otherwise, shows tqdm progress on
stderr for long work, and fails with one clear line on stderr and exit code 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator, Optional, Sequence

from .clitext import print_table
from .config import CALIBRATIONS, CENTRES, DTYPE_CHOICES, METHODS, NOISE_MODELS, PAIRINGS, DDIMSettings, GenerationSettings
from .generated import BASELINE_METHODS

log = logging.getLogger("oodgen")

EXIT_USAGE = 2
MAX_DIAGNOSE = 2000  # latents per file that `diagnose` uses (the paper: 1,000; 2,000 at d = 196,608 is 1.6 GB); more are sampled


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# ---------------------------------------------------------------- shared pieces
@contextmanager
def _progress_bar(desc: str, quiet: bool, unit: str = "img-step") -> Iterator[Callable[[int, int], None]]:
    """A progress(done, total) callback backed by a tqdm bar on stderr, closed on exit."""
    from tqdm.auto import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
        if bar.total != total:  # estimates get exact as work proceeds
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def _add_model_args(p: argparse.ArgumentParser, default_model: Optional[str] = "DEFAULT") -> None:
    from .models import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL if default_model == "DEFAULT" else default_model,
                   help=f"registry name, diffusers folder, ADM checkpoint file or hub id (default: {DEFAULT_MODEL if default_model == 'DEFAULT' else 'the one the latents were made with'})")
    p.add_argument("--model-config", default=None, help="architecture of a raw ADM checkpoint: preset name or JSON file of its constructor arguments")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps (default: auto)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="UNet precision; auto = bfloat16 on a CPU with native bf16 (AVX512-BF16/AMX), float32 elsewhere "
                        "(default: auto; --dtype float32 to opt out)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet: a one-off compile per batch shape, then faster steps on long runs "
                        "(channels_last on CUDA); falls back to the plain forward with a warning where unavailable")


def _add_ddim_args(p: argparse.ArgumentParser, from_file: bool = False) -> None:
    d = DDIMSettings()
    tail = " (default: the latent file's)" if from_file else ""
    p.add_argument("--t-end", type=int, default=None if from_file else d.t_end, help=f"operating timestep of the latent space (default: {d.t_end}){tail}")
    p.add_argument("--steps", type=int, default=None if from_file else d.steps, help=f"DDIM steps (default: {d.steps}){tail}")
    p.add_argument("--batch-size", type=_batch_arg, default="auto", metavar="N|auto", help=BATCH_HELP)


CALIBRATION_HELP = ("after the noise model: quantiles gives each channel of a sample the intensity distribution interpolated "
                    "between its two sources' ((1 - alpha) Q_i + alpha Q_j, recorded at inversion), keeping the decoded pixel ranks; "
                    f"none leaves the decoder's (default: {GenerationSettings().calibration})")
BATCH_HELP = ("images per model call, halved automatically on out-of-memory; auto (default): sized to the free GPU memory "
              "on CUDA, the fastest batch measured once per machine and model on CPU (cached)")


def _batch_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a whole number nor auto") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _batch_size(args: argparse.Namespace, model, n: Optional[int] = None) -> int:
    """--batch-size as a number: ``auto`` becomes :func:`oodgen.engine.auto_batch_size` (``FALLBACK_BATCH`` if the probe fails)."""
    if args.batch_size != "auto":
        return int(args.batch_size)
    from . import engine

    try:
        return engine.auto_batch_size(model, n=n)
    except Exception as e:  # noqa: BLE001 - a failed probe must not stop a run that a fixed batch size would do
        fallback = engine.FALLBACK_BATCH
        log.warning("could not size the batch (%s: %s); using %d", type(e).__name__, e, fallback)
        return fallback


def _load_model(args: argparse.Namespace, meta: Optional[dict] = None):
    """The model named by --model, else the one recorded in a latent file's metadata."""
    from .models import load_model

    if args.model is None and meta is not None:
        if not meta.get("model"):
            raise CLIError("the latent file does not record its model; pass --model")
        return load_model(meta["model"], device=args.device, dtype=args.dtype, model_config=args.model_config or meta.get("model_config"),
                          compile=args.compile)
    return load_model(args.model, device=args.device, dtype=args.dtype, model_config=args.model_config, compile=args.compile)


def _portable(name: Optional[str]) -> Optional[str]:
    """Registry keys, presets and hub ids as given; existing local paths made absolute."""
    from .models import REGISTRY

    if name is None or name in REGISTRY or not Path(name).exists():
        return name
    return str(Path(name).resolve())


def _skipped(message: str) -> None:
    """Report a skipped file or sample (the message names it) on stderr."""
    print(f"oodgen: skipped {message}", file=sys.stderr)


def _read_inputs(paths: Sequence[str]) -> list:
    """Samples from files/folders/zips; skipped files reported on stderr, CLIError when none is usable."""
    from .data import TooManyFiles, load_paths

    try:
        report = load_paths(paths)
    except TooManyFiles as e:
        raise CLIError(f"{str(e).split(';')[0]}: this command holds every image in memory; pass a subset, or use `invert`, "
                       "which streams any number of files, and work on its latent file") from None
    for _, msg in report.errors:
        _skipped(msg)
    if report.ignored:
        log.info("ignored non-data files: %s", ", ".join(report.ignored))
    if not report.samples:
        raise CLIError(f"no usable images in {', '.join(map(str, paths))}" + (f" ({len(report.errors)} skipped, see above)" if report.errors else ""))
    log.info("loaded %d samples (%s) from %s", len(report.samples), report.samples[0].kind, ", ".join(map(str, paths)))
    return report.samples


def _load_data_and_model(args: argparse.Namespace) -> tuple:
    """(model, x [N, C, H, W] in [-1, 1], stretch or None, samples): data first, so bad input fails fast."""
    from .data import to_model_input

    samples = _read_inputs(args.input)
    model = _load_model(args)
    x, stretch = to_model_input(samples, model.resolution, model.channels)
    return model, x, stretch, samples


# ---------------------------------------------------------------- commands
def cmd_models(args: argparse.Namespace) -> int:
    from .models import REGISTRY

    for spec in REGISTRY.values():
        print(f"{spec.key:32s} {spec.resolution:4d}px  {'bundled' if spec.bundled else 'hub    '}  {spec.description}")
    return 0


def cmd_invert(args: argparse.Namespace) -> int:
    """Invert in checkpointed chunks of files (:mod:`oodgen.bulk`); under torchrun each rank takes a run of chunks.

    Memory holds about two chunks, whatever the size of the data set; a rerun after a crash or Ctrl-C
    resumes from ``<out>.parts``. Rank 0 streams every chunk, in input order, into ``--out``
    (:mod:`oodgen.distributed`).
    """
    import contextlib
    import dataclasses
    import io

    from . import bulk, distributed, engine, pipeline
    from .latents import save_latents_from_parts

    settings = DDIMSettings(t_end=args.t_end, steps=args.steps)  # batch size set once the model is loaded
    if args.chunk_size < 1:
        raise CLIError(f"--chunk-size {args.chunk_size} must be at least 1")
    info = distributed.env_info()  # without torchrun: world_size 1, and nothing below changes anything
    args.device, args.quiet = distributed.local_device(args.device, info), args.quiet or not info.is_main
    with contextlib.nullcontext() if info.is_main else contextlib.redirect_stderr(io.StringIO()):
        inputs = pipeline.inversion_inputs(args.input, on_skip=_skipped)  # bad input fails here, before the model loads
        model = _load_model(args)
    plan = pipeline.inversion_plan(inputs, model, settings, args.chunk_size, args.model_config)
    store = bulk.ChunkStore(bulk.parts_dir(args.out))
    chunks = plan.chunks
    log.info("%d files in %d chunks of %d; checkpoints in %s", len(plan.files), len(chunks), plan.chunk_files, store.root)
    info = distributed.init_from_env(args.device)  # after the model load, see init_from_env
    try:
        batch = distributed.min_over_ranks(_batch_size(args, model, n=min(len(plan.files), plan.chunk_files)))  # one size everywhere
        settings = dataclasses.replace(settings, batch_size=batch)
        log.info("batch size %d", batch)
        if not distributed.same_on_all_ranks([(name, path.stat().st_size) for name, path in plan.files]):
            raise CLIError("the ranks see different input files; every node must see the same --input data")
        start, stop = distributed.shard_range(len(chunks), info.world_size, info.rank, 1)
        with _progress_bar("invert", args.quiet) as update:
            try:
                metas = bulk.invert_chunks(plan, range(start, stop), store, lambda x, cb: engine.invert(model, x, settings, progress=cb),
                                           settings.steps, progress=update, readers=bulk.cpu_readers(), on_skip=_skipped)
            except KeyboardInterrupt:
                print(f"oodgen: stopped; the chunks done so far are kept in {store.root}: run the same command again to resume", file=sys.stderr)
                raise
        everyone = distributed.gather_objects_to_rank0(metas)
        owner = {k: r for r in range(info.world_size) for k in range(*distributed.shard_range(len(chunks), info.world_size, r, 1))}
        if everyone is not None:  # rank 0: write the merged file, receiving the other ranks' chunks in order
            metas = {k: m for part in everyone for k, m in part.items()}
            sizes = [len(metas[k]["sources"]) for k in range(len(chunks))]
            skipped = sum(len(metas[k]["errors"]) for k in range(len(chunks)))
            if sum(sizes) == 0:
                raise CLIError(f"no usable images in {', '.join(map(str, args.input))} ({skipped} skipped, see above)")
            shape = (sum(sizes), model.channels, model.resolution, model.resolution)

            def parts() -> Iterator:
                for k in range(len(chunks)):
                    if owner[k] == 0:
                        yield from bulk.chunk_parts(plan, store, [k])
                    elif sizes[k]:
                        yield distributed.recv_on_rank0(owner[k], (sizes[k], *shape[1:]))

            sources = [src for k in range(len(chunks)) for src in metas[k]["sources"]]
            meta = pipeline.latent_metadata(_portable(model.name), _portable(args.model_config), model.resolution, settings, inputs, sources)
            if info.world_size > 1:
                meta["world_size"] = info.world_size
            save_latents_from_parts(args.out, parts(), shape, meta)
            print(f"wrote {shape[0]} latents {shape[1:]} at t={settings.t_end} to {args.out}"
                  + (f"; skipped {skipped} unusable files or samples (see above)" if skipped else ""), file=sys.stderr)
        else:
            for k in range(start, stop):
                if metas[k]["sources"]:
                    distributed.send_to_rank0(next(bulk.chunk_parts(plan, store, [k])))
        distributed.barrier()  # all ranks leave together, once the file is written
        store.remove()
        return 0
    finally:
        distributed.cleanup()


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from . import engine

    model, x, _, samples = _load_data_and_model(args)
    settings = DDIMSettings(t_end=args.t_end, steps=args.steps, batch_size=_batch_size(args, model, n=len(x)))
    with _progress_bar("reconstruct", args.quiet) as update:
        rec = engine.reconstruct(model, x, settings, progress=update)
    result = {**rec.summary(), "model": model.name, "t_end": settings.t_end, "steps": settings.steps,
              "per_image": {s.name: round(float(m), 6) for s, m in zip(samples, rec.mae)}}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"reconstruction MAE ([0, 1] scale) over {result['n']} images: {result['mae']:.4f} +- {result['mae_std']:.4f}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from . import engine, pipeline
    from .latents import load_latents, source_profile

    if args.method in BASELINE_METHODS:
        return _generate_baseline(args)
    if not args.latents:
        raise CLIError(f"--method {args.method} samples latents: pass --latents FILE (made by python -m oodgen invert)")
    z, meta = load_latents(args.latents)
    recorded = pipeline.latent_settings(meta)
    t_end = args.t_end if args.t_end is not None else recorded.t_end if recorded else None
    steps = args.steps if args.steps is not None else recorded.steps if recorded else None
    if t_end is None or steps is None:
        raise CLIError(f"{args.latents} does not record t_end/steps; pass --t-end and --steps")
    if args.t_end is not None and recorded is not None and recorded.t_end != args.t_end:
        raise CLIError(f"--t-end {args.t_end} differs from the latents' t_end {recorded.t_end}: the latents live at t={recorded.t_end}")
    ddim_settings = DDIMSettings(t_end=int(t_end), steps=int(steps))
    gen_settings = GenerationSettings(method=args.method, alpha=args.alpha, eta=args.eta, seed=args.seed,
                                      per_dim_variance=args.per_dim_variance, geometric_filter=args.filter, pairing=args.pairing,
                                      neighbours=args.neighbours, alpha_spread=args.alpha_spread, clusters=args.clusters, noise=args.noise,
                                      centre=args.centre, calibration=args.calibration)
    model = _load_model(args, meta)
    ddim_settings = DDIMSettings(t_end=int(t_end), steps=int(steps), batch_size=_batch_size(args, model, n=args.n))
    with _progress_bar("generate", args.quiet) as update:
        gen = engine.generate(model, z, args.n, ddim_settings, gen_settings, progress=update, sources=source_profile(meta))
    pipeline.write_sampled_set(args.out, gen, meta, model.name, ddim_settings, gen_settings, {"latents": str(args.latents)},
                               save_latents=args.save_latents)
    print(f"wrote {len(gen.draws)} images to {args.out}" + (" (PNG + physical .npy)" if meta.get("stretch") else ""), file=sys.stderr)
    return 0


def _pixel_sources(args: argparse.Namespace) -> tuple[list, int, Optional[object], Optional[dict]]:
    """(source samples, side, stretch, latent metadata) for --method pixel: --input, put in the order of the latent
    file's recorded sources (by SHA-256) when --latents is given, at its resolution and stretch."""
    from .latents import read_metadata
    from .pipeline import latent_stretch

    if not args.input:
        raise CLIError("--method pixel crossfades the source images themselves: pass --input DIR (the folder you inverted)")
    samples = _read_inputs(args.input)
    if not args.latents:
        return samples, min(min(s.data.shape[:2]) for s in samples), None, None
    meta = read_metadata(args.latents)
    recorded = [src for src in meta.get("sources") or [] if isinstance(src, dict)]
    by_hash = {s.sha256: s for s in samples if getattr(s, "sha256", None)}
    missing = [src.get("name") for src in recorded if src.get("sha256") not in by_hash]
    if not recorded or missing:
        raise CLIError(f"--input does not hold {'the sources' if not recorded else f'{len(missing)} of the {len(recorded)} sources'} "
                       f"that {args.latents} records{' (e.g. ' + ', '.join(map(str, missing[:3])) + ')' if missing else ''}; "
                       "pass the folder you inverted, or leave out --latents")
    return [by_hash[src["sha256"]] for src in recorded], int(meta.get("resolution") or samples[0].data.shape[0]), latent_stretch(meta), meta


def _generate_baseline(args: argparse.Namespace) -> int:
    """generate --method pixel (crossfades of random pairs of the sources) or finetune (a fine-tuned model's own prior)."""
    from . import finetune
    from .generated import model_output_images, write_generated
    from .pipeline import generated_manifest, latent_stretch

    if args.method == "pixel":
        from .crossfade import crossfade_set

        samples, side, stretch, meta = _pixel_sources(args)
        rgb, physical, records = crossfade_set(samples, args.n, side, args.alpha, args.seed, stretch)
        unit = next((s.unit for s in samples if s.unit), None) if physical is not None else None
        kind = (meta or {}).get("kind") or samples[0].kind
        manifest = generated_manifest("pixel", None, (meta or {}).get("ddim"), {"method": "pixel", "alpha": args.alpha, "seed": args.seed},
                                      kind, stretch.to_json() if stretch is not None else None,
                                      {"latents": str(args.latents) if args.latents else None, "inputs": [str(p) for p in args.input]},
                                      resolution=side)
    else:
        if not args.model:
            raise CLIError("--method finetune samples a fine-tuned model: pass --model FOLDER (made by python -m oodgen finetune)")
        record = finetune.read_record(args.model)
        if not record:
            log.warning("%s has no %s: sampling its prior as it is (not a model made by `oodgen finetune`)", args.model, finetune.RECORD)
        model = _load_model(args)
        steps = args.steps if args.steps is not None else DDIMSettings().steps
        with _progress_bar("generate", args.quiet) as update:
            images = finetune.sample(model, args.n, steps, args.eta, args.seed, _batch_size(args, model, n=args.n), progress=update)
        stretch = latent_stretch(record)
        rgb, physical = model_output_images(images, stretch)
        records = finetune.prior_records(args.n)
        unit = stretch.unit if stretch is not None else None
        manifest = generated_manifest("finetune", _portable(args.model), {"t_end": model.num_train_timesteps - 1, "steps": min(steps, model.num_train_timesteps - 1)},
                                      {"method": "finetune", "eta": args.eta, "seed": args.seed, "steps": steps}, record.get("kind"),
                                      record.get("stretch"), {"inputs": record.get("inputs")}, base_model=record.get("base_model"),
                                      finetune={k: record.get(k) for k in ("steps", "seconds", "n_images")})
    write_generated(args.out, rgb, physical, records, manifest, unit=unit)
    print(f"wrote {len(rgb)} images ({args.method}) to {args.out}" + (" (PNG + physical .npy)" if physical is not None else ""),
          file=sys.stderr)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune a copy of the base model on --input (checkpointed in OUT.ckpt/, resumed by the same command)."""
    import shutil

    from . import finetune

    if args.out and Path(args.out).exists() and not finetune.read_record(args.out) and any(Path(args.out).iterdir()):
        raise CLIError(f"{args.out} exists and is not a fine-tuned model folder; pass a new --out folder")
    try:
        settings = finetune.FinetuneSettings(steps=None if args.minutes is not None and args.steps is None else (args.steps or finetune.FinetuneSettings().steps),
                                             seconds=args.minutes * 60 if args.minutes is not None else None, batch_size=args.batch_size,
                                             lr=args.lr, seed=args.seed, flip=not args.no_flip, checkpoint_every=args.checkpoint_every)
    except ValueError as e:
        raise CLIError(f"fine-tuning settings: {e}") from None
    if args.dtype == "auto":
        args.dtype = "float32"  # training starts from the float32 weights (auto's bf16 would round them first)
    model, x, stretch, samples = _load_data_and_model(args)
    ckpt = finetune.checkpoint_dir_for(args.out)
    with _progress_bar("finetune", args.quiet, unit="step") as update:
        try:
            result = finetune.finetune(model, x, settings, checkpoint_dir=ckpt, progress=update)
        except KeyboardInterrupt:
            print(f"oodgen: stopped; checkpoints every {settings.checkpoint_every} steps are kept in {ckpt}: run the same command "
                  "again to resume", file=sys.stderr)
            raise
    record = {**finetune.data_record(samples, stretch, samples[0].kind), "inputs": [str(p) for p in args.input],
              "settings": settings.to_json()}
    finetune.save_tuned(result, model, args.out, record)
    shutil.rmtree(ckpt, ignore_errors=True)
    k = max(1, len(result.losses) // 5)
    first, last = sum(result.losses[:k]) / k, sum(result.losses[-k:]) / k
    print(f"fine-tuned a copy of {model.name} on {len(samples)} images: {result.steps} steps in {result.seconds:.0f} s"
          f"{f' (resumed at step {result.resumed_from})' if result.resumed_from else ''}, mean loss {first:.4f} -> {last:.4f} (first/last fifth of the steps); "
          f"wrote {args.out}; sample it with: python -m oodgen generate --method finetune --model {args.out} --n 16 --out DIR", file=sys.stderr)
    return 0


@contextmanager
def _stage_bar(quiet: bool) -> Iterator[Callable[[str, int, int], None]]:
    """progress(stage, done, total) with one tqdm bar per stage."""
    with ExitStack() as stack:
        bars: dict[str, Callable[[int, int], None]] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = stack.enter_context(_progress_bar(stage, quiet))
            bars[stage](done, total)

        yield update


def _write_outputs(args: argparse.Namespace, payload: dict, report=None, figures: Optional[dict] = None) -> None:
    """--json and --html outputs: the diagnostics report when given, else a page of ``figures``."""
    from . import diagnostics
    from .fsutil import atomic_write

    if args.json:
        text = json.dumps(payload, indent=2, allow_nan=False)
        atomic_write(Path(args.json), lambda tmp: tmp.write_text(text))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.html:
        if report is not None:
            atomic_write(Path(args.html), lambda tmp: diagnostics.write_html_report(report, tmp))
        else:
            atomic_write(Path(args.html), lambda tmp: diagnostics.write_figures_page(tmp, "oodgen", figures or {}, payload))
        print(f"wrote {args.html}", file=sys.stderr)


def cmd_diagnose(args: argparse.Namespace) -> int:
    from . import diagnostics, pipeline
    from .latents import count_latents, load_latents

    if args.max_n < 2:
        raise CLIError(f"--max-n {args.max_n} must be at least 2")

    def sample(path: str) -> tuple:
        """(latents, metadata, names) of at most --max-n latents of ``path``: a seeded random subset, in file order."""
        import numpy as np

        n = count_latents(path)
        rows = None
        if n > args.max_n:
            rows = sorted(np.random.default_rng(args.seed).choice(n, size=args.max_n, replace=False).tolist())
            print(f"oodgen: {path}: diagnosing a random {args.max_n:,} of its {n:,} latents (--max-n)", file=sys.stderr)
        z, meta = load_latents(path, rows)
        names = [s["name"] for s in meta.get("sources") or []] or None
        if names is not None and rows is not None:
            names = [names[i] for i in rows]
        return z, meta, names

    def t_end_of(m: dict) -> Optional[int]:
        recorded = pipeline.latent_settings(m)
        return recorded.t_end if recorded is not None else None

    z_ood, meta, names_ood = sample(args.ood)
    t_end = t_end_of(meta)
    if args.id:
        z_id, meta_id, names_id = sample(args.id)
        if t_end_of(meta_id) != t_end or meta_id.get("model") != meta.get("model"):
            print(f"oodgen: warning: ID latents (model {meta_id.get('model')}, t={t_end_of(meta_id)}) and OOD latents "
                  f"(model {meta.get('model')}, t={t_end}) differ", file=sys.stderr)
        id_source = pipeline.reference_label("inverted", len(z_id), where=args.id)
    else:
        recorded = pipeline.latent_settings(meta) or DDIMSettings(t_end=999, steps=50)
        model = _load_model(args, meta) if recorded.t_end < 999 else None  # the prior at t=999 needs no model
        prior, id_source = pipeline.id_reference(model, [recorded.t_end], n_prior=args.id_prior, shape=tuple(z_ood.shape[1:]),
                                                 steps=recorded.steps, seed=args.seed)
        (z_id,) = prior.values()
        names_id = None
    with _stage_bar(args.quiet) as bar:
        report = diagnostics.diagnose(z_ood, z_id, id_source, names_ood=names_ood, names_id=names_id, seed=args.seed,
                                      with_umap=not args.no_umap, progress=lambda stage, f: bar("diagnose", int(1000 * f), 1000))
    print(f"OOD: {args.ood} (n={report.n_ood}, model {meta.get('model')}, t={t_end}); ID: {id_source}; d={report.d}")
    print_table(diagnostics.table_rows(report))
    payload = report.to_json()
    payload["ood_file"], payload["t_end"], payload["model"] = str(args.ood), t_end, meta.get("model")
    _write_outputs(args, payload, report)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from . import diagnostics, sweep
    from .data import to_model_input

    ood_samples = _read_inputs(args.input)
    id_samples = _read_inputs(args.id_input) if args.id_input else None
    model = _load_model(args)
    x_ood, _ = to_model_input(ood_samples, model.resolution, model.channels)
    x_id = to_model_input(id_samples, model.resolution, model.channels)[0] if id_samples else None
    with _stage_bar(args.quiet) as bar:
        rows, label = sweep.t_sweep(model, x_ood, args.t, x_id=x_id, n_prior=args.id_prior or 0, steps=args.steps,
                                    batch_size=_batch_size(args, model), seed=args.seed, progress=bar)
    print(f"t sweep of {len(ood_samples)} OOD samples with {model.name}; ID: {label}")
    print_table([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows])
    payload = {"model": model.name, "id_source": label, "steps": args.steps, "rows": rows}
    _write_outputs(args, payload, figures={"t sweep": diagnostics.t_sweep_figure(rows)})
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import evaluation, quality

    settings = quality.QualitySettings(kind=args.kind, n_boot=args.n_boot, morph_max=args.morph_max, workers=args.workers, seed=args.seed)
    real = evaluation.load_set(args.real)
    side = real.x.shape[1]
    gen = evaluation.load_set(args.generated, name=args.label or Path(args.generated).name, unit=real.unit, bands=real.bands)
    baselines = [evaluation.load_set(b, unit=real.unit, bands=real.bands) for b in args.baseline or []]
    for s in (gen, *baselines):
        if s.note:
            print(f"oodgen: {s.name}: {s.note}", file=sys.stderr)
    with _progress_bar("evaluate", args.quiet) as update:
        ev = evaluation.evaluate_sets(gen, real, baselines, args.kind, settings, with_crossfade=not args.no_crossfade,
                                      progress=lambda stage, frac: update(int(round(frac * 1000)), 1000))
    evaluation.write_quality_report(ev, args.json, args.html, montage_path=args.montage)
    print(f"kind: {ev.report.kind}; real: {len(real.x)} images at {side}x{side}; each set compared with half B of the real set")
    print(evaluation.summary_text(ev))
    print(f"farthest from the floor ({gen.name}): {', '.join(ev.report.worst(gen.name))}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from . import evaluation, quality

    real = evaluation.load_set(args.input)
    grid = evaluation.SearchGrid(t_end=tuple(args.t_end), eta=tuple(args.eta), pairing=tuple(args.pairing), noise=tuple(args.noise),
                                 n_per_cell=args.n, steps=args.steps)
    base = GenerationSettings(method=args.method, alpha=args.alpha, seed=args.seed, alpha_spread=args.alpha_spread, centre=args.centre,
                              calibration=args.calibration)
    model = _load_model(args)
    settings = quality.QualitySettings(kind=args.kind, morph_max=args.morph_max, seed=args.seed)
    with _progress_bar("search", args.quiet) as update:
        rows, ev = evaluation.bandwidth_search(model, real, base, grid, args.kind, settings, batch_size=_batch_size(args, model),
                                               progress=lambda stage, frac: update(int(round(frac * 1000)), 1000))
    extra: dict = {"model": model.name, "generation": base.to_json()}
    figures = {}
    if args.diversity_curve:
        best = next(r for r in rows if r["best"])
        g = GenerationSettings.from_json({**base.to_json(), "eta": best["eta"], "pairing": best["pairing"], "noise": best["noise"]})
        with _progress_bar("diversity curve", args.quiet) as update:
            extra["diversity_curve"] = evaluation.diversity_curve(model, real, g, t_end=best["t_end"], steps=args.steps, seed=args.seed,
                                                                  batch_size=_batch_size(args, model),
                                                                  progress=lambda stage, frac: update(int(round(frac * 1000)), 1000))
        figures["diversity vs number of sources"] = evaluation.diversity_figure(extra["diversity_curve"])
    evaluation.write_search_report(rows, ev, args.json, args.html, extra=extra, figures=figures)
    print_table(rows)
    best = next(r for r in rows if r["best"])
    print(f"best: t_end {best['t_end']}, eta {best['eta']:g}, pairing {best['pairing']}, noise {best['noise']} (C2ST {best['c2st_stats']:.3f}; "
          f"floor {ev.report.summary()[0]['c2st_stats']:.3f})")
    return 0


def cmd_convert_adm(args: argparse.Namespace) -> int:
    from . import adm

    try:
        unet = adm.load_adm_checkpoint(args.checkpoint, args.model_config)
    except (adm.ADMConversionError, OSError) as e:
        raise CLIError(f"cannot convert {args.checkpoint}: {e}") from None
    out = adm.save_as_diffusers(unet, args.out)
    n = sum(p.numel() for p in unet.parameters())
    print(f"wrote {out} ({n / 1e6:.1f}M parameters); use it with --model {out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .bulk import CHUNK_FILES

    p = argparse.ArgumentParser(prog="python -m oodgen", description="New images of unseen domains from a frozen DDPM (DDIM inversion + latent sampling).")
    p.add_argument("--version", action="version", version=f"oodgen {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)  # -v / -q also accepted after the command
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log details")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: _add_parser(*a, parents=[common], **k)  # type: ignore[method-assign]

    s = sub.add_parser("models", help="list the known models")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("invert", help="DDIM-invert images to latents (a .safetensors file)")
    s.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files, folders or zip archives (PNG/JPEG/TIFF/WebP, FITS, .npy/.npz)")
    s.add_argument("--out", required=True, metavar="FILE.safetensors", help="latent file to write (checkpoints go to FILE.safetensors.parts/ meanwhile)")
    s.add_argument("--chunk-size", type=int, default=CHUNK_FILES, metavar="FILES",
                   help=f"files per checkpointed chunk, read ahead while the previous one inverts (default: {CHUNK_FILES})")
    _add_model_args(s)
    _add_ddim_args(s)
    s.set_defaults(func=cmd_invert)

    s = sub.add_parser("reconstruct", help="invert and denoise back; report the mean absolute error")
    s.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files, folders or zip archives")
    s.add_argument("--json", action="store_true", help="print one JSON object (mae, mae_std, n, per_image)")
    _add_model_args(s)
    _add_ddim_args(s)
    s.set_defaults(func=cmd_reconstruct)

    g = GenerationSettings()
    s = sub.add_parser("generate", help="sample new latents between inverted ones and denoise them to images")
    s.add_argument("--latents", metavar="FILE", help="latent file from `invert` (pixel: optional, for its sources' order, resolution and stretch; "
                                                     "finetune: not used)")
    s.add_argument("--n", type=int, required=True, help="number of images")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder (PNG, + physical .npy for multi-band sources, generated.json)")
    s.add_argument("--method", choices=METHODS + BASELINE_METHODS, default=g.method,
                   help=f"how new latents are drawn (default: {g.method}); baselines: pixel (crossfades of random pairs of the --input "
                        "images, at --alpha) and finetune (samples of the fine-tuned --model's own prior, `oodgen finetune`)")
    s.add_argument("--input", nargs="+", metavar="PATH", help="pixel: the source images (the folder you inverted)")
    s.add_argument("--alpha", type=float, default=g.alpha, help=f"interpolation weight in [0, 1] (default: {g.alpha})")
    s.add_argument("--eta", type=float, default=g.eta, help=f"DDIM stochasticity while decoding (default: {g.eta})")
    s.add_argument("--seed", type=int, default=g.seed, help=f"random seed (default: {g.seed})")
    s.add_argument("--per-dim-variance", action="store_true", help="gaussian: per-dimension instead of scalar variance")
    s.add_argument("--filter", action="store_true", help="keep only draws that pass the authors' geometric filter")
    s.add_argument("--pairing", choices=PAIRINGS, default=g.pairing,
                   help=f"interpolation pairs: random, or nearest (a partner among the --neighbours closest latents) (default: {g.pairing})")
    s.add_argument("--neighbours", type=int, default=g.neighbours, help=f"nearest pairing: candidates per latent (default: {g.neighbours})")
    s.add_argument("--alpha-spread", type=float, default=g.alpha_spread,
                   help=f"alpha drawn uniformly in [alpha - spread, alpha + spread] (default: {g.alpha_spread})")
    s.add_argument("--clusters", type=int, default=g.clusters, help=f"gaussian: one Gaussian per k-means cluster (default: {g.clusters})")
    s.add_argument("--noise", choices=NOISE_MODELS, default=g.noise,
                   help=f"match: add white noise up to the source images' pixel noise; sky: also shift to their sky level "
                        f"(border median); both measured at inversion (default: {g.noise})")
    s.add_argument("--centre", choices=CENTRES, default=g.centre,
                   help=f"slerp turns about the cloud of inverted latents' centre (their mean) or the origin (the authors' code) (default: {g.centre})")
    s.add_argument("--calibration", choices=CALIBRATIONS, default=g.calibration, help=CALIBRATION_HELP)
    s.add_argument("--save-latents", action="store_true", help="also save the new latents to DIR/latents.safetensors")
    _add_model_args(s, default_model=None)
    _add_ddim_args(s, from_file=True)
    s.set_defaults(func=cmd_generate)

    from .finetune import FinetuneSettings

    f = FinetuneSettings()
    s = sub.add_parser("finetune", help="baseline: fine-tune a copy of the base model on the OOD images (DDPM loss), save a diffusers folder")
    s.add_argument("--input", nargs="+", required=True, metavar="PATH", help="the OOD images (files, folders, zips)")
    s.add_argument("--out", required=True, metavar="FOLDER", help="the tuned model (diffusers folder + finetune.json); checkpoints in FOLDER.ckpt/")
    budget = s.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default: {f.steps})")
    budget.add_argument("--minutes", type=float, default=None, help="time budget of the training loop instead of a number of steps")
    s.add_argument("--batch-size", type=int, default=f.batch_size, help=f"images per step (default: {f.batch_size})")
    s.add_argument("--lr", type=float, default=f.lr, help=f"Adam learning rate (default: {f.lr:g})")
    s.add_argument("--seed", type=int, default=f.seed, help=f"seed of batches, flips, timesteps and noise (default: {f.seed})")
    s.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    s.add_argument("--checkpoint-every", type=int, default=f.checkpoint_every, help=f"steps between checkpoints (default: {f.checkpoint_every})")
    _add_model_args(s)
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser("diagnose", help="latent-space diagnostics of an OOD latent file against an ID reference (Table 3)")
    s.add_argument("--ood", required=True, metavar="FILE", help="OOD latent file from `invert`")
    grp = s.add_mutually_exclusive_group(required=True)
    grp.add_argument("--id", metavar="FILE", help="ID latent file (inverted in-domain images, same model and t)")
    grp.add_argument("--id-prior", type=int, metavar="N", help="use N draws of the model's prior as the ID reference")
    s.add_argument("--json", metavar="OUT", help="write all numbers as JSON")
    s.add_argument("--html", metavar="OUT", help="write a self-contained HTML report (table and every plot)")
    s.add_argument("--no-umap", action="store_true", help="skip UMAP (faster)")
    s.add_argument("--max-n", type=int, default=MAX_DIAGNOSE, metavar="N",
                   help=f"diagnose a seeded random N of the latents of a larger file, read without loading the rest (default: {MAX_DIAGNOSE:,})")
    s.add_argument("--seed", type=int, default=0, help="seed of splits, triplets, UMAP and prior draws")
    _add_model_args(s, default_model=None)
    s.set_defaults(func=cmd_diagnose)

    s = sub.add_parser("convert-adm", help="convert an ADM / improved-DDPM checkpoint (.pt) into a diffusers folder")
    s.add_argument("checkpoint", help="guided-diffusion checkpoint (.pt/.pth/.ckpt or .safetensors)")
    s.add_argument("--model-config", required=True, help="preset (afhq-dog-256-p2, afhq-dog-256-ilvr) or JSON file of the ADM constructor arguments")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder (DDPMPipeline layout)")
    s.set_defaults(func=cmd_convert_adm)

    from .sweep import DEFAULT_T_VALUES

    s = sub.add_parser("sweep", help="separability and geometry across t_end (choose the operating latent space)")
    s.add_argument("--input", nargs="+", required=True, metavar="PATH", help="OOD images (files, folders, zips)")
    grp = s.add_mutually_exclusive_group(required=True)
    grp.add_argument("--id-input", nargs="+", metavar="PATH", help="in-domain images (inverted alongside)")
    grp.add_argument("--id-prior", type=int, metavar="N", help="N draws of the model's prior, pushed to each t")
    s.add_argument("--t", type=int, nargs="+", default=list(DEFAULT_T_VALUES), help=f"timesteps (default: {' '.join(map(str, DEFAULT_T_VALUES))})")
    s.add_argument("--steps", type=int, default=DDIMSettings().steps, help="DDIM steps up to the largest t")
    s.add_argument("--batch-size", type=_batch_arg, default="auto", metavar="N|auto", help=BATCH_HELP)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", metavar="OUT", help="write the rows as JSON")
    s.add_argument("--html", metavar="OUT", help="write the sweep plot as self-contained HTML")
    _add_model_args(s)
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("evaluate", help="compare a generated set with real images: statistics, C2ST, floors, baselines, memorization")
    s.add_argument("--generated", required=True, metavar="DIR", help="generated set (folder from `generate`; physical .npy preferred over PNG)")
    s.add_argument("--real", required=True, nargs="+", metavar="PATH", help="real images or maps (the set the latents came from)")
    s.add_argument("--baseline", nargs="*", metavar="DIR", help="other generated sets to put beside it (other methods or settings)")
    s.add_argument("--kind", choices=("auto", "galaxy", "physical", "image"), default="auto",
                   help="statistics family (default auto: physical for maps with units, galaxy when the real folder is named so, else image)")
    s.add_argument("--label", help="name of the generated set in tables (default: its folder name)")
    s.add_argument("--no-crossfade", action="store_true", help="leave out the pixel-crossfade baseline")
    s.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for the CIs (default: 200)")
    s.add_argument("--morph-max", type=int, default=200, help="galaxy: statmorph on at most this many images per set (default: 200)")
    s.add_argument("--workers", type=int, default=2, help="processes for statmorph (default: 2)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", metavar="OUT", help="write the report as JSON")
    s.add_argument("--html", metavar="OUT", help="write the report as one offline HTML page (table, figures, montages)")
    s.add_argument("--montage", metavar="PNG", help="write the real-vs-generated montage (a row per set, same stretch) as a PNG")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("search", help="bandwidth search: generate over a grid of t_end, eta and pairing, evaluate every cell")
    from .evaluation import SearchGrid

    grid = SearchGrid()
    s.add_argument("--input", nargs="+", required=True, metavar="PATH", help="the real images or maps (inverted once per t_end)")
    s.add_argument("--t-end", type=int, nargs="+", default=list(grid.t_end), help=f"operating timesteps (default: {' '.join(map(str, grid.t_end))})")
    s.add_argument("--eta", type=float, nargs="+", default=list(grid.eta), help=f"decoding stochasticity values (default: {' '.join(f'{e:g}' for e in grid.eta)})")
    s.add_argument("--pairing", nargs="+", choices=PAIRINGS, default=list(grid.pairing), help=f"pairing strategies (default: {' '.join(grid.pairing)})")
    s.add_argument("--noise", nargs="+", choices=NOISE_MODELS, default=list(grid.noise),
                   help=f"noise models, no extra decoding (default: {' '.join(grid.noise)})")
    s.add_argument("--n", type=int, default=grid.n_per_cell, help=f"samples per cell (default: {grid.n_per_cell})")
    s.add_argument("--steps", type=int, default=DDIMSettings().steps, help="DDIM steps per t_end")
    s.add_argument("--method", choices=("slerp", "lerp"), default="slerp")
    s.add_argument("--alpha", type=float, default=0.5)
    s.add_argument("--alpha-spread", type=float, default=0.0)
    s.add_argument("--centre", choices=CENTRES, default=GenerationSettings().centre, help="slerp about the latents' mean (cloud) or the origin")
    s.add_argument("--calibration", choices=CALIBRATIONS, default=GenerationSettings().calibration, help=CALIBRATION_HELP)
    s.add_argument("--kind", choices=("auto", "galaxy", "physical", "image"), default="auto")
    s.add_argument("--diversity-curve", action="store_true", help="also measure diversity against the number of source images at the best cell (paper Fig. 7)")
    s.add_argument("--morph-max", type=int, default=60, help="galaxy: statmorph on at most this many images per cell (default: 60)")
    s.add_argument("--batch-size", type=_batch_arg, default="auto", metavar="N|auto", help=BATCH_HELP)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", metavar="OUT")
    s.add_argument("--html", metavar="OUT")
    _add_model_args(s)
    s.set_defaults(func=cmd_search)

    from .cli_mos import add_mos_commands

    add_mos_commands(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .data import DataError
    from .ddim import Cancelled
    from .latents import LatentFileError
    from .models import ModelLoadError

    try:
        return int(args.func(args) or 0)
    except (CLIError, DataError, ModelLoadError, LatentFileError, ValueError, FileNotFoundError) as e:
        print(f"oodgen: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, Cancelled):
        print("oodgen: interrupted", file=sys.stderr)
        return 130
