"""The files-in, files-out layer (oodgen.pipeline): the command line and the app's jobs write the same artifacts."""

import gzip
import io
import json
import shutil

import numpy as np
import pytest
import torch

from oodgen import pipeline, service, tasks
from oodgen.cli import main
from oodgen.config import DDIMSettings, GenerationSettings
from oodgen.data import load_paths
from oodgen.generated import MANIFEST, write_generated
from oodgen.jobs import JobQueue
from oodgen.latents import load_latents
from oodgen.workspace import Workspace
from tests.conftest import SAMPLES, require_bundled_model

RECORD_KEYS = ("id", "name", "owner", "shared", "created")  # the workspace's own fields of a record
ORIGIN_KEYS = ("latents", "run", "run_name", "domain")  # where the sources came from, as each front end names it


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _without(d, keys):
    return {k: v for k, v in d.items() if k not in keys}


def test_cli_and_app_write_the_same_latent_file_and_generated_set(tmp_path):
    """Invert and generate the same dust maps through `python -m oodgen` and through the app's jobs: the latent files
    (tensor and metadata) and the generated sets (files, maps, manifest, latents) agree but for timestamps and paths."""
    require_bundled_model()
    settings = DDIMSettings(t_end=300, steps=3, batch_size=4)
    maps = sorted((SAMPLES / "radiation").glob("*.npy"))[:6]
    src = maps + [SAMPLES / "radiation" / "manifest.json"]  # the maps' unit and bands
    cli_in = tmp_path / "cli" / "files"  # named like a workspace dataset's folder, so the source names agree
    cli_in.mkdir(parents=True)
    for f in src:
        shutil.copyfile(f, cli_in / f.name)

    # the command line
    z_file = tmp_path / "cli" / "z.safetensors"
    common = ["--model", "oodgen-faces-32", "--batch-size", "4", "-q"]
    assert main(["invert", "--input", str(cli_in), "--out", str(z_file), "--t-end", "300", "--steps", "3", *common]) == 0
    cli_set = tmp_path / "cli" / "gen"
    assert main(["generate", "--latents", str(z_file), "--n", "4", "--seed", "1", "--out", str(cli_set), "--save-latents", *common]) == 0

    # the app's jobs, on a dataset of the same files
    ws = Workspace(tmp_path / "home")
    ds = tasks.save_dataset(ws, "anon-a", "dust", src, load_paths([cli_in]))
    q = JobQueue(ws, tasks.RUNNERS)
    try:
        inv = q.wait(q.submit("invert", "anon-a", "inv", {"dataset": ds.id, "model": "oodgen-faces-32", "settings": settings.to_json(),
                                                        "name": "dust"}).id, 300)
        assert inv.status == "done", inv.message
        gen = q.wait(q.submit("generate", "anon-a", "gen", {"run": inv.result, "n": 4, "name": "dust set",
                                                            "generation": GenerationSettings(seed=1).to_json()}).id, 300)
        assert gen.status == "done", gen.message
    finally:
        q.close()
    run, app_set = ws.get("runs", inv.result), ws.get("generated", gen.result)

    # latent files: the same tensor, the same metadata but for the creation time
    z_cli, meta_cli = load_latents(z_file)
    z_app, meta_app = load_latents(run.root / tasks.LATENTS)
    assert torch.equal(z_cli, z_app)
    assert _without(meta_cli, ("created",)) == _without(meta_app, ("created",))
    assert meta_cli["ddim"] == settings.to_json() and pipeline.latent_settings(meta_cli) == settings  # stored once, nested
    assert [s["name"] for s in meta_cli["sources"]] == [f"files/{f.name}" for f in maps]

    # generated sets: one layout, the same files, maps [band, y, x] and manifest
    assert _files(cli_set) == _files(app_set.root)
    assert "gen_0000.png" in _files(cli_set) and "gen_0000.npy" in _files(cli_set) and MANIFEST in _files(cli_set)
    for name in _files(cli_set):
        if name.endswith(".npy"):
            a, b = np.load(cli_set / name), np.load(app_set.root / name)
            assert a.shape == (3, 32, 32) and np.array_equal(a, b), name
        elif name.endswith(".png"):
            assert (cli_set / name).read_bytes() == (app_set.root / name).read_bytes(), name
    m_cli = json.loads((cli_set / MANIFEST).read_text())
    m_app = _without(app_set.meta, RECORD_KEYS)
    assert m_cli["latents"] == str(z_file) and (m_app["run"], m_app["run_name"], m_app["domain"]) == (run.id, "dust", "dust")
    assert _without(m_cli, ORIGIN_KEYS) == _without(m_app, ORIGIN_KEYS)
    assert m_cli["unit"] == "MJy/sr" and m_cli["stretch"] == meta_cli["stretch"] and len(m_cli["samples"]) == 4
    g_cli, gm_cli = load_latents(cli_set / "latents.safetensors")
    g_app, gm_app = load_latents(app_set.root / "latents.safetensors")
    assert torch.equal(g_cli, g_app)
    assert _without(gm_cli, ("created", "generated_from")) == _without(gm_app, ("created", "generated_from"))


def test_settings_round_trip_defaults_missing_keys_and_refuse_unknown_ones():
    for s in (DDIMSettings(t_end=400, steps=7, batch_size=3), GenerationSettings(method="lerp", alpha=0.3, pairing="nearest")):
        assert type(s).from_json(json.loads(json.dumps(s.to_json()))) == s
    assert DDIMSettings.from_json({"steps": 5}) == DDIMSettings(steps=5) and GenerationSettings.from_json(None) == GenerationSettings()
    with pytest.raises(ValueError, match="DDIMSettings: unknown setting 'tend'; known: t_end, steps, batch_size"):
        DDIMSettings.from_json({"tend": 300})
    # a latent file written before the settings were nested still reads
    assert pipeline.latent_settings({"t_end": 500, "steps": 20}) == DDIMSettings(t_end=500, steps=20)
    assert pipeline.latent_settings({}) is None


def test_the_prior_reference_is_labelled_once_and_needs_no_model_at_T():
    ref, label = pipeline.id_reference(None, [999], n_prior=5, shape=(3, 4, 4), seed=2)
    assert list(ref) == [999] and ref[999].shape == (5, 3, 4, 4) and label == "model prior N(0, I) at t=999 (n=5)"
    with pytest.raises(ValueError, match="need the model"):
        pipeline.id_reference(None, [300], n_prior=5, shape=(3, 4, 4))
    assert pipeline.reference_label("prior", 8, [300]) == "model prior N(0, I) at t=999, pushed to t=300 by DDIM denoising (n=8)"
    assert pipeline.reference_label("inverted", 8, where="faces") == "inverted in-domain images from faces (n=8)"


def _fits_bytes(m):
    from astropy.io import fits

    buf = io.BytesIO()
    fits.PrimaryHDU(m).writeto(buf)
    return buf.getvalue()


def test_a_study_made_in_the_app_takes_compressed_fits(service_backend, tmp_path):
    """Real maps in .fits.gz and .fz (tile-compressed) files are study items, as .fits and .npy are."""
    from astropy.io import fits

    from oodgen import ratings as R

    rng = np.random.default_rng(0)
    maps = [rng.gamma(2.0, 1.0, (32, 32)).astype("float32") for _ in range(6)]
    up = tmp_path / "up"
    up.mkdir()
    (up / "a.fits.gz").write_bytes(gzip.compress(_fits_bytes(maps[0])))
    (up / "b.fits.gz").write_bytes(gzip.compress(_fits_bytes(maps[1])))
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(maps[2])]).writeto(up / "c.fz")
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(maps[3])]).writeto(up / "d.fits.fz")
    (up / "e.fits").write_bytes(_fits_bytes(maps[4]))
    files = sorted(up.iterdir())
    report = load_paths(files)
    assert len(report.samples) == 5, report.errors
    ws = service_backend.ws
    ds = tasks.save_dataset(ws, "anon-a", "maps", files, report)

    def fill(tmp):
        phys = np.stack([2.0 * m for m in maps[:3]])[..., None]  # [n, H, W, 1]
        rgb = np.repeat((255 * phys / phys.max()).astype("uint8"), 3, axis=-1)
        return write_generated(tmp, rgb, phys, [{} for _ in range(3)], {"method": "slerp", "model": "m", "generation": {"method": "slerp"}},
                               write_manifest=False)

    gen = ws.create("generated", "bright maps", "anon-a", fill)
    service.create_study("anon-a", "fz-1", "maps", [gen.id], ds.id, 10, "", 0.0, display_size=32)
    study = R.load_study(ws.home, "fz-1")
    real = sorted(e.origin for e in study.items if e.source == "real")
    assert real == ["a.fits.gz", "b.fits.gz", "c.fz", "d.fits.fz", "e.fits"]
    assert sum(e.source == "generated" for e in study.items) == 3 and study.stretch is not None
