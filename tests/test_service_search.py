"""The app's bandwidth-search job through oodgen.service: a tiny grid on the fast bundled model, cached like quality."""

import numpy as np
import pytest

from oodgen import service, tasks


def test_search_grid_and_source_errors_name_the_problem(service_backend):
    with pytest.raises(service.UserError, match="t_end values: enter one or more numbers"):
        service.search_grid("", "0", ["random"], ["none"], 8)
    with pytest.raises(service.UserError, match="eta values"):
        service.search_grid("500", "zero", ["random"], ["none"], 8)
    with pytest.raises(service.UserError, match="at least one t_end, eta, pairing and noise"):
        service.search_grid("500", "0", [], ["none"], 8)
    with pytest.raises(service.UserError, match="n_per_cell=2 must be at least 4"):
        service.search_grid("500", "0", ["random"], ["none"], 2)
    grid = service.search_grid("300, 600 300", "0, 0.5", ["random"], ["none", "match"], 6)
    assert grid.t_end == (300, 600) and grid.eta == (0.0, 0.5) and len(grid.cells()) == 8  # repeats dropped, every combination
    with pytest.raises(service.UserError, match="no real images chosen"):
        service.start_search("anon-a", "", "oodgen-faces-32", grid)
    with pytest.raises(service.UserError, match="pick one from the list"):
        service.start_search("anon-a", "run:no-such-run", None, grid)
    assert service_backend.jobs.jobs("anon-a") == []
    assert service.search_view("anon-a", "bundled:faces", "oodgen-faces-32").table is None  # nothing computed yet
    assert service.search_stamp("anon-a", "bundled:faces", "oodgen-faces-32") == ""


def test_search_job_table_best_cell_figure_html_and_cache(service_backend, monkeypatch):
    from tests.conftest import require_bundled_model

    require_bundled_model()
    owner, jobs = "anon-a", service_backend.jobs
    grid = service.search_grid("300", "0", ["random", "nearest"], ["none"], 6, steps=4)
    settings = service.quality_settings("image", n_boot=20, morph_max=10)
    assert [label for label, _ in service.search_sources(owner)][:1] == ["dataset: bundled: galaxy"]
    job = service.start_search(owner, "bundled:faces", "oodgen-faces-32", grid, settings)
    assert "search of faces with oodgen-faces-32 (2 cells x 6 samples)" in job.label
    job = jobs.wait(job.id, 600)
    assert job.status == "done", job.message
    assert job.message.startswith("search of 'faces': best t300 eta0 ") and "C2ST" in job.message

    v = service.search_view(owner, "bundled:faces", "oodgen-faces-32")
    assert list(v.table.columns) == list(service.SEARCH_COLUMNS)
    assert list(v.table["pairing"]) == ["random", "nearest", "", ""] and list(v.table["t_end"]) == [300, 300, "floor", "crossfade"]
    assert v.table["best"].sum() == 1  # exactly one cell is named best
    best = v.table[v.table["best"]].iloc[0]
    assert f"pairing {best['pairing']}" in v.summary and "Best: t_end 300, eta 0.0" in v.summary and "12 real images" in v.summary
    assert all(0 <= float(c) <= 1 for c in v.table["C2ST statistics"])
    assert len(v.figure.data) >= 2 and "(best)" in "".join(v.figure.data[0].text)  # the cells (best labelled) and the crossfade
    assert v.montage.dtype == np.uint8 and v.montage.shape[0] > 3 * 32  # real row + one row per cell
    page = open(v.html).read()
    assert "bandwidth search" in page and "<script src=" not in page  # offline
    assert not v.html.startswith(str(service_backend.ws.home))  # a copy: the workspace is never served
    stamp = service.search_stamp(owner, "bundled:faces", "oodgen-faces-32")
    assert stamp and service.search_cached(owner, "bundled:faces", "oodgen-faces-32", grid, settings)
    assert not service.search_cached(owner, "bundled:faces", "oodgen-faces-32", service.search_grid("300", "0", ["random"], ["none"], 6), settings)

    # the same request again reads the cache: nothing is searched, the report is untouched
    from oodgen import evaluation

    monkeypatch.setattr(evaluation, "bandwidth_search", lambda *a, **k: pytest.fail("searched again instead of reading the cache"))
    again = jobs.wait(service.start_search(owner, "bundled:faces", "oodgen-faces-32", grid, settings).id, 60)
    assert again.status == "done" and "from the cache" in again.message, again.message
    assert service.search_stamp(owner, "bundled:faces", "oodgen-faces-32") == stamp
    # another owner sees the bundled set's search too (bundled sets are everyone's), but not someone's private run
    assert service.search_view("anon-b", "bundled:faces", "oodgen-faces-32").table is not None
    assert tasks.search_dir(service_backend.ws, "bundled:faces", "oodgen-faces-32") != tasks.search_dir(service_backend.ws, "bundled:faces", "oodgen-photos-64")


def test_a_run_as_the_search_source_means_its_dataset_and_its_model(service_backend):
    ws = service_backend.ws
    run = ws.create("runs", "faces run", "anon-a", lambda tmp: {"dataset": "bundled:faces", "model": "oodgen-faces-32", "n": 12,
                                                                 "settings": {"t_end": 500, "steps": 5}})
    ref, folder, name, model = tasks.search_source(ws, f"run:{run.id}", "anon-a", "oodgen-photos-64")
    assert (ref, name, model) == ("bundled:faces", "faces", "oodgen-faces-32") and folder.is_dir()  # the run's model wins
    assert tasks.search_dir(ws, ref, model) == tasks.search_dir(ws, "bundled:faces", "oodgen-faces-32")  # one cache either way
    assert (f"run: faces run (12) · oodgen-faces-32 t=500", f"run:{run.id}") in service.search_sources("anon-a")
    with pytest.raises(service.UserError, match="pick one from the list"):
        service.start_search("anon-b", f"run:{run.id}", None, service.search_grid("300", "0", ["random"], ["none"], 6))  # not theirs
