"""Ingest end to end: small JPEGs by manifest from an S3 bucket, probed and thumbnailed by a worker.

ingest_items_per_s          items brought in per second by one Celery worker (the job's own
                            wall time: fetch from S3, hash, probe, perceptual hash, thumbnail,
                            store blob + thumbnail in S3, rows in PostgreSQL)
ingest_worker_peak_rss_mib  the worker's peak resident memory (main process + pool), sampled
item_list_p95_ms            p95 of one item-list page (50 items, with presigned URLs) through the
                            whole Django/DRF stack, at the dataset size of the scale, following
                            cursors from the first page to deep ones
item_list_p50_ms            the same, median
ingest_worker_cpu_ms_per_item   CPU the worker (all its processes) spent per item
ingest_s3_cpu_ms_per_item       CPU the S3 server (SeaweedFS, on the same cores) spent per item
ingest_db_cpu_ms_per_item       CPU PostgreSQL spent per item (every backend, so also other users')
ingest_items_per_s_worker_cores items/s the worker's CPU cost allows on 2 cores of its own
                                (2000 / worker ms per item): production runs S3 and PostgreSQL
                                elsewhere, here all three share the same 2 cores
ingest_goal_ratio               ingest_items_per_s / 300 (the goal)

Scales: small = 1,000 JPEGs and 10,000 listed items; full = 10,000 JPEGs and 100,000 items (the
issue's goal: ≥ 300 items/s on 2 cores, list p95 ≤ 50 ms).

Runs against DATABASE_URL / REDIS_URL when set (in a fresh database `loupe_bench`), else against
embedded PostgreSQL/Redis in a temporary home; S3 is a SeaweedFS it starts and stops.
"""

from __future__ import annotations

import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil

from bench import Figure
from bench.seaweed import start_seaweedfs

SCALES = {"small": (1_000, 10_000), "full": (10_000, 100_000)}
MIB = 1024 * 1024
BENCH_DB = "loupe_bench"


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    rng = random.Random(seed)  # noqa: S311  (test pictures, not secrets)
    image = Image.new("RGB", (320, 240), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    for _ in range(12):  # a few shapes so every image differs and has structure
        x, y = rng.randrange(300), rng.randrange(220)
        image.paste((rng.randrange(256), rng.randrange(256), rng.randrange(256)), (x, y, x + 20, y + 20))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def _database_env(home: Path) -> tuple[dict[str, str], Any]:
    """DATABASE_URL / REDIS_URL of a fresh bench database; embedded services when none are set."""
    import psycopg

    from config.env import parse_database_url

    stop = None
    env: dict[str, str] = {}
    base = os.environ.get("DATABASE_URL")
    if base:
        dsn = parse_database_url(base)
        admin = psycopg.connect(dbname="postgres", user=dsn.user, password=dsn.password, host=dsn.host,
                                port=dsn.port or None, autocommit=True)  # fmt: skip
        auth = quote(dsn.user) + (":" + quote(dsn.password) if dsn.password else "")
        env["DATABASE_URL"] = f"postgresql://{auth}@{dsn.host}:{dsn.port or 5432}/{BENCH_DB}"
        env["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    else:
        from config.embedded import services_start

        run_dir = home / "run"
        services = services_start(home=home, run_dir=run_dir, database="postgres", postgres=True, redis=True)
        stop = services.stop
        admin = psycopg.connect(dbname="postgres", user="postgres", host=str(run_dir), autocommit=True)
        env["DATABASE_URL"] = f"postgresql://postgres@/{BENCH_DB}?host={quote(str(run_dir))}"
        env["REDIS_URL"] = f"unix://{run_dir / 'redis.sock'}"
    with admin:
        admin.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {BENCH_DB}")
    return env, stop


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


class _CpuShare:
    """CPU seconds spent by the worker tree, the S3 server and PostgreSQL between start and stop."""

    def __init__(self, worker: int, s3: int) -> None:
        self.groups = {"worker": lambda: _tree(worker), "s3": lambda: _tree(s3), "db": _postgres}
        self.start = {name: _cpu_seconds(find()) for name, find in self.groups.items()}

    def stop(self) -> dict[str, float]:
        return {name: _cpu_seconds(find()) - self.start[name] for name, find in self.groups.items()}


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _postgres() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")]


class _PeakRss:
    """Samples a process tree's total RSS in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                continue

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "ingest", "--concurrency", "2",
               "--without-gossip", "--without-mingle", "--loglevel", "WARNING"]  # fmt: skip
    output = log.open("wb")
    worker = subprocess.Popen(command, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT)
    return worker


def run(scale: str) -> list[Figure]:
    files, listed = SCALES[scale]
    home = Path(tempfile.mkdtemp(prefix="lb", dir="/tmp"))
    weed = start_seaweedfs(Path(tempfile.mkdtemp(prefix="loupe-bench-weed-")))
    stop_services = None
    worker = None
    try:
        env, stop_services = _database_env(home)
        endpoint = weed.endpoint
        env.update({
            "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only"), "LOUPE_HOME": str(home),
            "LOUPE_STORAGE": "s3", "LOUPE_S3_BUCKET": "loupe-store", "LOUPE_S3_ENDPOINT_URL": endpoint.url,
            "LOUPE_S3_ADDRESSING": "path", "AWS_ACCESS_KEY_ID": endpoint.access_key,
            "AWS_SECRET_ACCESS_KEY": endpoint.secret_key, "DJANGO_SETTINGS_MODULE": "config.settings",
            "LOUPE_URL_FETCH_ALLOWED_NETWORKS": "127.0.0.1/32",
        })  # fmt: skip
        os.environ.update(env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        s3 = endpoint.client()
        s3.create_bucket(Bucket="loupe-store")
        s3.create_bucket(Bucket="camera-dump")
        keys = [f"frames/{i:06d}.jpg" for i in range(files)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda i: s3.put_object(Bucket="camera-dump", Key=keys[i], Body=_jpeg(i),
                                                  ContentType="image/jpeg"), range(files)))  # fmt: skip

        worker = _start_worker(env, home / "worker.log")
        rss = _PeakRss(worker.pid)
        time.sleep(3)  # let the worker connect before the job is queued
        dataset, token = _setup_dataset(endpoint)
        cpu = _CpuShare(worker.pid, weed.process.pid)
        from storage import services
        from storage.access import dataset_access

        user = dataset.created_by
        access = dataset_access(user=user, dataset_id=dataset.pk)
        source = services.bucket_source_create(
            actor=user, access=access, bucket="camera-dump", endpoint_url=endpoint.url, addressing="path",
            access_key_id=endpoint.access_key, secret_access_key=endpoint.secret_key,
        )  # fmt: skip
        job = services.ingest_manifest(
            actor=user, access=access, records=[{"key": key} for key in keys], bucket_source_id=source.pk
        )
        finished = _wait(job.pk, worker, home / "worker.log")
        peak = rss.stop()
        spent = cpu.stop()
        elapsed = (finished.finished_at - finished.created_at).total_seconds()
        if finished.state != "succeeded" or finished.done != files or finished.error_count:
            raise RuntimeError(
                f"ingest did not bring every file in: {finished.state} {finished.done}/{files}, "
                f"{finished.error_count} errors, {finished.failure}"
            )
        p50, p95 = _list_latency(dataset, token, listed)
        worker_ms = 1000 * spent["worker"] / files
        return [
            Figure("ingest_items_per_s", files / elapsed, "items/s"),
            Figure("ingest_goal_ratio", files / elapsed / 300, "x"),
            Figure("ingest_worker_cpu_ms_per_item", worker_ms, "ms"),
            Figure("ingest_s3_cpu_ms_per_item", 1000 * spent["s3"] / files, "ms"),
            Figure("ingest_db_cpu_ms_per_item", 1000 * spent["db"] / files, "ms"),
            Figure("ingest_items_per_s_worker_cores", 2000 / worker_ms, "items/s"),
            Figure("ingest_worker_peak_rss_mib", peak / MIB, "MiB"),
            Figure("item_list_p50_ms", p50, "ms"),
            Figure("item_list_p95_ms", p95, "ms"),
        ]
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        weed.stop()
        if stop_services is not None:
            stop_services()


def _setup_dataset(endpoint: Any) -> tuple[Any, str]:
    from django.contrib.auth.models import User

    from projects import services as project_services
    from storage import services

    user = User.objects.create_user(username="bench")
    org = project_services.organization_create(actor=user, name="Bench", slug="bench")
    dataset = services.dataset_create(actor=user, organization_id=org.pk, name="frames")
    _, token = project_services.api_token_create(user=user, name="bench")
    return dataset, token


def _wait(job_id: int, worker: subprocess.Popen[bytes], log: Path) -> Any:
    from projects.models import Job

    while True:
        job = Job.objects.get(id=job_id)
        if job.is_finished:
            return job
        if worker.poll() is not None:
            raise RuntimeError("the worker died:\n" + log.read_text()[-3000:])
        time.sleep(0.2)


def _list_latency(dataset: Any, token: str, listed: int) -> tuple[float, float]:
    """Fill the dataset to `listed` items, then time list pages through the full API stack."""
    from django.db import connection
    from rest_framework.test import APIClient

    from storage.models import Item

    template = Item.objects.filter(dataset=dataset).first()
    assert template is not None
    missing = listed - Item.objects.filter(dataset=dataset).count()
    batch = 5000
    for start in range(0, missing, batch):
        Item.objects.bulk_create(
            Item(dataset=dataset, name=f"synthetic/{start + i:07d}.jpg", modality="image",
                 media_type="image/jpeg", size=template.size, meta={**template.meta, "n": start + i},
                 primary_id=template.primary_id, thumbnail_id=template.thumbnail_id, phash=template.phash)
            for i in range(min(batch, missing - start))
        )  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE storage_item")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}", HTTP_HOST="127.0.0.1")
    timings: list[float] = []
    first_page = f"/api/v1/datasets/{dataset.pk}/items?page_size=50"
    url = first_page
    for _ in range(5):  # warm up
        client.get(url)
    for _ in range(200):
        started = time.perf_counter()
        response = client.get(url)
        timings.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"list answered {response.status_code}: {response.content[:300]!r}")
        url = response.json()["next"] or first_page
    timings.sort()
    return statistics.median(timings), timings[int(len(timings) * 0.95) - 1]
