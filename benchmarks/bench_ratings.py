"""Benchmark: MOS rating throughput and latency with many raters on a large ratings CSV.

    .venv/bin/python benchmarks/bench_ratings.py [--rows 100000] [--raters 20] [--ratings 30] [--home DIR] [--app]

Target (issue 17): with 20 concurrent raters and 100,000 rows already in the CSV, at least 9 ratings
per second and a p95 latency under 1 s on 2 CPU cores.

Setup (not timed): a workspace with a 100-item study (the bundled galaxies as "real", the bundled
training faces as "generated", at 256 px like the app's studies) and a ratings CSV pre-filled with
``--rows`` rows spread over this and ten other studies. Timed: each of ``--raters`` threads is one
rater doing what one click in the Rate tab does: ``service.submit_rating`` for the item on screen,
then ``service.rate_view`` for the next one (the session is re-derived from the CSV every time, as in
the app), ``--ratings`` times. The first call after start reads the whole CSV once; it is timed
separately ("cold"). Prints ratings per second, p50 / p95 / max latency of one click and the ratios to
the targets (>= 1 meets a target), and checks that every rating was written once. By default
in-process (threads, like the app's worker threads), without HTTP and the Gradio queue.

``--app`` runs the real server instead (``python app.py`` on this workspace, its own process) and
rates through it with one page session per rater speaking Gradio's queue protocol over HTTP, the
page's calls (load, Start, then one score button per click with the item on screen), each answer's
image fetched and checked to decode whole; a click's latency is then what a rater waits for, queue
included. It also prints the server's CPU time per click, which does not depend on how busy the
machine is.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
TARGET_RATE = 9.0  # ratings per second
TARGET_P95_S = 1.0  # seconds per click, 95th percentile
STUDY = "bench-mos"


def make_workspace(home: Path, rows: int) -> int:
    """The study and a pre-filled CSV; returns the study's plan length per rater."""
    from oodgen import ratings as R

    samples = REPO / "assets" / "samples"
    real = sorted((samples / "galaxy").glob("*.png"))[:50]
    gen = sorted((samples / "faces_train").glob("*.png"))[:50]
    items = [R.StudyItem(p, "real") for p in real] + [R.StudyItem(p, "generated", "slerp", "oodgen-photos-64") for p in gen]
    study = R.create_study(home, STUDY, "galaxy", items, repeat_fraction=0.1, display_size=256)
    path = R.default_ratings_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(R.CSV_COLUMNS)
        for k in range(rows):
            study_id = STUDY if k % 11 == 0 else f"old-study-{k % 11}"
            item = f"item_{1 + k % 100:04d}"
            w.writerow(["2026-01-01T00:00:00.000Z", study_id, f"past-rater-{k // 100}", "0" * 16, item, "real" if k % 2 else "generated",
                        "galaxy", "" if k % 2 else "slerp", "" if k % 2 else "m", 1 + k % 5, 0, 1500, ""])
        f.flush()
        os.fsync(f.fileno())
    return len(R.rater_plan(study, "rater-00"))


def _start_app(home: Path):
    """``python app.py`` on a free port with this workspace; (process, url)."""
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    env = {**os.environ, "OODGEN_HOME": str(home), "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", "OODGEN_DEFAULT_MODEL": "oodgen-faces-32"}
    log = open(home / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(360):
        if proc.poll() is not None:
            sys.exit(f"the app exited; see {home / 'app.log'}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("the app did not start within 180 s")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc), or nan elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


class _AppRater:
    """One rater's page session on the real server, speaking Gradio's queue protocol (what the page sends) over one HTTP connection.

    A thin client on purpose: gradio_client used several times the server's CPU per click on the
    same cores, so it measured itself more than the app.
    """

    BUTTONS = {5: "on_rate", 4: "on_rate_1", 3: "on_rate_2", 2: "on_rate_3", 1: "on_rate_4"}  # the score buttons in page order

    def __init__(self, url: str, name: str) -> None:
        import uuid

        import httpx

        self.url, self.name, self.session = url.rstrip("/"), name, uuid.uuid4().hex[:11]
        self.http = httpx.Client(timeout=120)
        self.deps = {d.get("api_name"): d for d in self.http.get(self.url + "/config").json()["dependencies"]}
        self.call("on_load", [None, {}])  # the page load: fills this session's study list
        self.view = self.call("on_rate_start", [STUDY, name, {}])

    def call(self, api_name: str, data: list) -> list:
        import json

        dep = self.deps[api_name]
        r = self.http.post(self.url + "/gradio_api/queue/join",
                           json={"data": data, "event_data": None, "fn_index": dep["id"], "trigger_id": None, "session_hash": self.session})
        r.raise_for_status()
        event = r.json()["event_id"]
        with self.http.stream("GET", self.url + "/gradio_api/queue/data", params={"session_hash": self.session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    if msg.get("event_id") == event and msg.get("msg") == "process_completed":
                        if not msg.get("success"):
                            raise RuntimeError(f"{self.name}: {api_name} failed: {msg.get('output')}")
                        return msg["output"]["data"]
        raise RuntimeError(f"{self.name}: {api_name} got no answer")

    def rate(self, score: int) -> None:
        import io
        import re

        from PIL import Image

        image, _, _, position = self.view[:4]
        item = re.search(r"(item_[0-9]+)[.]png", image["path"]).group(1)  # what RATE_JS sends: the item on screen
        out = self.call(self.BUTTONS[score], [STUDY, self.name, position, None, "", item])  # None: the server-side state
        if not (isinstance(out[0], dict) and out[0].get("path")):
            raise RuntimeError(f"{self.name}: the score for {item} was refused: {out}")
        data = self.http.get(out[0]["url"]).content  # the browser fetches the next image
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # whole
        self.view = out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000, help="rows already in the ratings CSV")
    p.add_argument("--raters", type=int, default=20, help="concurrent raters (threads)")
    p.add_argument("--ratings", type=int, default=30, help="ratings per rater")
    p.add_argument("--home", type=Path, default=None, help="workspace folder (default: a new temporary one)")
    p.add_argument("--app", action="store_true", help="rate through the real server (python app.py) over HTTP, as the page does")
    a = p.parse_args()
    home = (a.home or Path(tempfile.mkdtemp(prefix="oodgen-bench-ratings-"))).resolve()
    os.environ["OODGEN_HOME"] = str(home)
    from oodgen import ratings as R
    from oodgen import service

    t0 = time.perf_counter()
    plan_len = make_workspace(home, a.rows)
    if a.ratings > plan_len:
        sys.exit(f"--ratings {a.ratings} is more than the study's {plan_len} items per rater")
    print(f"setup: study of 100 items, {a.rows:,} rows in the CSV ({R.default_ratings_path(home).stat().st_size / 1e6:.1f} MB), "
          f"{time.perf_counter() - t0:.1f} s (not timed)")

    proc = None
    if a.app:
        proc, url = _start_app(home)
        t0 = time.perf_counter()
        _AppRater(url, "rater-warmup")
        print(f"app: {url}; cold: first session after start (reads the whole CSV once): {time.perf_counter() - t0:.2f} s")
    else:
        t0 = time.perf_counter()
        service.rate_view(STUDY, "rater-warmup")
        print(f"cold: first session after start (reads the whole CSV once): {time.perf_counter() - t0:.2f} s")

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(a.raters + 1)

    def rater(k: int) -> None:
        name = f"rater-{k:02d}"
        try:
            if a.app:
                page = _AppRater(url, name)
            else:
                view = service.rate_view(STUDY, name)
            start.wait()
            for n in range(a.ratings):
                t = time.perf_counter()
                if a.app:
                    page.rate(1 + (k + n) % 5)
                else:
                    service.submit_rating(STUDY, name, view.position, 1 + (k + n) % 5, "", 1000, shown_item=view.item_id)
                    view = service.rate_view(STUDY, name)
                with lock:
                    latencies.append(time.perf_counter() - t)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{name}: {e!r}")
            start.abort()

    threads = [threading.Thread(target=rater, args=(k,)) for k in range(a.raters)]
    for t in threads:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    cpu0 = _cpu_s(proc.pid) if proc is not None else 0.0
    own0 = time.process_time()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    server_cpu = _cpu_s(proc.pid) - cpu0 if proc is not None else None
    client_cpu = time.process_time() - own0
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=30)
    if errors:
        sys.exit("errors:\n" + "\n".join(errors[:10]))

    mine = [r for r in R.read_ratings(R.default_ratings_path(home)) if r.study == STUDY and r.rater.startswith("rater-")]
    keys = {(r.rater, r.item, r.repeat) for r in mine}
    expected = a.raters * a.ratings
    lat = sorted(latencies)
    p50, p95 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(0.95 * len(lat)))]
    rate = len(lat) / wall
    where = "through the app server (HTTP, Gradio queue, images fetched)" if a.app else "in-process"
    print(f"{a.raters} raters x {a.ratings} ratings on {a.rows:,} existing rows, {os.cpu_count()} CPUs, {where}: "
          f"{len(lat)} ratings in {wall:.1f} s")
    print(f"  throughput {rate:.1f} ratings/s   (target >= {TARGET_RATE:g}: ratio {rate / TARGET_RATE:.2f})")
    print(f"  latency per click p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms   "
          f"(target p95 < {TARGET_P95_S:g} s: ratio {TARGET_P95_S / p95:.2f})")
    if server_cpu is not None:  # independent of how busy the machine is: what one click costs the server
        print(f"  server CPU per click {1000 * server_cpu / max(1, len(lat)):.0f} ms (so at most {len(lat) / server_cpu:.0f} clicks "
              f"per CPU-second of the server process); the {a.raters} clients here used {1000 * client_cpu / max(1, len(lat)):.0f} ms "
              "per click of the same cores")
    print(f"  written: {len(mine)} rows, {len(keys)} distinct (expected {expected}); "
          + ("OK" if len(mine) == len(keys) == expected else "MISMATCH"))
    if not (len(mine) == len(keys) == expected):
        sys.exit(1)


if __name__ == "__main__":
    main()
