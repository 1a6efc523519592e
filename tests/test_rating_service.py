"""The Rate tab's service calls: images served whole under concurrency, scores tied to the item shown (no browser)."""

import pathlib
import threading

import pytest
from PIL import Image

from oodgen import ratings as R
from oodgen import service
from tests.conftest import SAMPLES


@pytest.fixture
def backend(service_backend):
    return service_backend


def _study(home, study_id="s1", n=4, display_size=96):
    real = sorted((SAMPLES / "galaxy").glob("*.png"))[:n]
    gen = sorted((SAMPLES / "faces").glob("*.png"))[:n]
    items = [R.StudyItem(p, "real") for p in real] + [R.StudyItem(p, "generated", "slerp", "m") for p in gen]
    return R.create_study(home, study_id, "galaxy", items, repeat_fraction=0.0, display_size=display_size)


def test_rate_images_are_files_written_once_so_concurrent_fetches_get_them_whole(backend, monkeypatch):
    """Gradio rewrote the same cache file for every request that returned the same array; a fetch during a rewrite came back cut."""
    import gradio as gr
    from gradio import processing_utils

    _study(backend.ws.home)
    views = [service.rate_view("s1", rater) for rater in ("ann", "bob", "cy") for _ in range(2)]
    assert all(isinstance(v.image, str) and v.image.endswith(f"{v.item_id}.png") for v in views)  # a file named after the item
    assert str(backend.ws.home) not in views[0].image  # a copy: the workspace is never served
    rewrites, lock = [], threading.Lock()
    real_write = pathlib.Path.write_bytes

    def spy(self, data):
        if self.exists():
            with lock:
                rewrites.append(str(self))
        return real_write(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", spy)
    image = gr.Image(interactive=False)
    served, errors = [], []

    def serve(view):  # what Gradio does with an event's output: postprocess, then move the file into its cache
        try:
            for _ in range(5):
                data = processing_utils.move_files_to_cache(image.postprocess(view.image), image, postprocess=True)
                with Image.open(data["path"]) as im:
                    im.load()  # whole: decodes to the end
                with lock:
                    served.append((view.item_id, data["path"]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=serve, args=(v,)) for v in views * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert not rewrites, f"{len(rewrites)} served files were rewritten, e.g. {rewrites[0]}"
    by_item = {}
    for item, path in served:
        by_item.setdefault(item, set()).add(path)
    assert all(len(paths) == 1 for paths in by_item.values()), by_item  # one cached file per item, reused


def test_a_score_for_an_item_not_on_screen_is_refused_and_not_recorded(backend):
    _study(backend.ws.home)
    v = service.rate_view("s1", "dee")
    service.submit_rating("s1", "dee", v.position, 4, shown_item=v.item_id)
    nxt = service.rate_view("s1", "dee")
    with pytest.raises(service.StaleRatingError, match="already rated"):  # the second of two fast clicks
        service.submit_rating("s1", "dee", v.position, 3, shown_item=v.item_id)
    with pytest.raises(service.StaleRatingError, match="was shown"):  # the position moved on, the screen did not
        service.submit_rating("s1", "dee", nxt.position, 3, shown_item=v.item_id)
    with pytest.raises(service.StaleRatingError, match="no image was shown yet"):
        service.submit_rating("s1", "dee", nxt.position, 3, shown_item="")
    rows = R.read_ratings(R.default_ratings_path(backend.ws.home))
    assert [(r.item, r.score) for r in rows] == [(v.item_id, 4)]


def _generated_set(ws, owner, n=3, physical=True):
    """A generated set as the generation job writes it: images/gen_k.png and, for physical data, physical/gen_k.npy."""
    import numpy as np

    real = sorted((SAMPLES / "radiation").glob("*.npy"))

    def fill(tmp):
        (tmp / "images").mkdir()
        if physical:
            (tmp / "physical").mkdir()
        for k in range(n):
            m = 3.0 * np.load(real[k])  # brighter than the real maps
            Image.fromarray((np.random.default_rng(k).random((32, 32, 3)) * 255).astype("uint8")).save(tmp / "images" / f"gen_{k:04d}.png")
            if physical:
                np.save(tmp / "physical" / f"gen_{k:04d}.npy", m.astype("float32"))
        return {"n": n, "model": "oodgen-faces-32", "generation": {"method": "slerp"}}

    return ws.create("generated", "bright maps", owner, fill)


def test_a_study_from_the_app_shows_all_sources_alike_and_says_how(backend):
    import numpy as np

    rec = _generated_set(backend.ws, "anon-a")
    note = service.create_study("anon-a", "rad-1", "radiation", [rec.id], "bundled:radiation", 3, "", 0.0, display_size=128)
    study = R.load_study(backend.ws.home, "rad-1")
    native = min(np.load(sorted((SAMPLES / "radiation").glob("*.npy"))[0]).shape[-2:])  # [band, y, x]; the maps are shown, not the PNGs
    assert study.effective_resolution == native and study.display_size == 128 and study.stretch is not None
    assert f"every item at {study.effective_resolution} px" in note and "one stretch" in note
    gen = [np.asarray(Image.open(study.root / e.file)).mean() for e in study.items if e.source == "generated"]
    real = [np.asarray(Image.open(study.root / e.file)).mean() for e in study.items if e.source == "real"]
    assert min(gen) > max(real)  # rendered from the maps with the real maps' stretch: three times the flux looks brighter
    with pytest.raises(service.UserError) as e:  # a duplicate id: a plain answer, no server path
        service.create_study("anon-a", "rad-1", "radiation", [rec.id], "bundled:radiation", 3, "", 0.0)
    assert "already exists" in str(e.value) and str(backend.ws.home) not in str(e.value) and "/" not in str(e.value)


def test_data_previews_are_files_written_once(backend, monkeypatch):
    """Everyone opening a bundled set gets the same previews: as arrays, Gradio rewrote each one's cache file per request."""
    import gradio as gr
    from gradio import processing_utils

    first, _ = service.show_dataset("anon-a", "bundled:galaxy")
    again, _ = service.show_dataset("anon-b", "bundled:galaxy")
    assert first == again and all(isinstance(p, str) and p.endswith(".png") for p, _ in first)
    rewrites = []
    real_write = pathlib.Path.write_bytes
    monkeypatch.setattr(pathlib.Path, "write_bytes", lambda self, data: (rewrites.append(str(self)) if self.exists() else None)
                        or real_write(self, data))
    gal = gr.Gallery()
    errors = []

    def serve():
        try:
            data = processing_utils.move_files_to_cache(gal.postprocess(first[:10]), gal, postprocess=True)
            for item in data:
                with Image.open(item["image"]["path"]) as im:
                    im.load()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=serve) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert not rewrites, rewrites[:3]
