"""The annotation queue under concurrent annotators: next task, submit, task list, through gunicorn.

next_task_p50_ms / _p95_ms / _p99_ms
                        POST /projects/{id}/next as 32 annotator clients see it (threads with
                        a lean HTTP client, one API token each), each looping next → submit with
                        a pause between tasks (exponential, mean THINK_S = 1 s: an annotator who
                        finishes a task every second, faster than people label), over a queue of
                        100k tasks with overlap 2
next_task_saturated_p95_ms
                        the same with no pause at all: 32 clients keep every core busy, so this
                        is mostly waiting in gunicorn's backlog (≈ 32 / rate); it shows next
                        degrading without lock waits (SKIP LOCKED), not a latency goal
next_task_1c_p95_ms     next with a single client, nothing else running: the floor
submit_1c_p95_ms        POST …/assignments/{a}/submit with an Idempotency-Key, one client doing
                        next → submit in sequence (the submit alone is timed)
submit_8c_per_s         submits per second with 8 clients at once, each submitting leases it
                        took beforehand (max_active raised for the phase): only submits timed
submit_8c_p95_ms        p95 of those submits
tasks_8c_per_s          tasks done per second by 8 clients looping next → submit (both timed)
task_list_p95_ms        GET /projects/{id}/tasks?page_size=100 with a manager's token, following
                        cursors from the first page to deep ones
duplicate_slots         must be 0. As the clients saw it: a task handed twice to one user, or to
                        more users than its overlap. From the database afterwards: tasks with
                        more active + submitted assignments than overlap, (task, author) pairs
                        with two submitted annotations, tasks whose counters (active,
                        submitted, open_slots) disagree with their assignments
lost_submits            must be 0: submits the clients saw succeed whose annotation the database
                        does not hold as submitted for that assignment; every 10th submit of the
                        paced phase is also sent again with the same key and must answer the
                        same annotation (a mismatch counts as lost)
next_task_goal_ratio    20 ms / next_task_p95_ms (≥ 1 meets the goal), and likewise
submit_1c_goal_ratio    30 ms / submit_1c_p95_ms, submit_8c_goal_ratio = submit_8c_per_s / 150,
task_list_goal_ratio    50 ms / task_list_p95_ms
web_cpu_ms_per_request  CPU of gunicorn (master + workers) per request of the paced phase
db_cpu_ms_per_request   CPU of the PostgreSQL backends of the bench database, per request
client_cpu_ms_per_request   CPU of the 32 clients (this process), per request
submit_web_cpu_ms / submit_db_cpu_ms   the same per submit, in the 8-client submit phase
submit_per_s_2_cores    submits/s that web + database CPU per submit allow on 2 cores of their own
                        (2000 / (submit_web_cpu_ms + submit_db_cpu_ms)): a ceiling that holds
                        however busy the machine was, with clients and other load elsewhere
other_cpu_cores         cores kept busy by everything else on the machine during the measurement
                        (anything well above 0 makes every latency pessimistic; said on stderr)

Scales: small = 10k tasks and fewer requests (quick); full = 100k tasks (the issue's size). Both
use 32 annotators and gunicorn with 4 sync workers (`loupe web --workers 4`, as the README
deploys it) on 127.0.0.1 with throttling raised out of the way. Clients, gunicorn, PostgreSQL and
Redis share the machine's cores.

Runs against DATABASE_URL / REDIS_URL when set (in a fresh database `loupe_bench_queue`, so it
never clobbers the other scenarios' `loupe_bench`), else against embedded PostgreSQL/Redis.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import psutil

from bench import Figure, ingest
from config.cli import child_env, free_port, wait_for_ready, web_argv

BENCH_DB = "loupe_bench_queue"
CLIENTS = 32
OVERLAP = 2
THINK_S = 1.0  # mean pause between an annotator's tasks in the latency phase (exponential)
RETRY_EVERY = 10  # every n-th submit of the latency phase is sent twice with the same key
WEB_WORKERS = 4


@dataclass(frozen=True)
class Scale:
    tasks: int
    next_per_client: int  # next → submit rounds per client, latency phase (paced)
    saturated_per_client: int  # the same without pauses
    submit_1c: int  # sequential next → submit rounds, one client
    submit_8c_per_client: int  # leased beforehand, then submitted as fast as possible
    cycle_8c_per_client: int  # next → submit rounds per client, 8 clients
    list_pages: int


SCALES = {
    "small": Scale(
        tasks=10_000,
        next_per_client=25,
        saturated_per_client=10,
        submit_1c=100,
        submit_8c_per_client=25,
        cycle_8c_per_client=15,
        list_pages=100,
    ),
    "full": Scale(
        tasks=100_000,
        next_per_client=100,
        saturated_per_client=30,
        submit_1c=400,
        submit_8c_per_client=100,
        cycle_8c_per_client=50,
        list_pages=400,
    ),
}

SPEC = {"classes": [{"name": "car", "color": "#ff0000", "tools": ["bbox"]}]}


def _percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    if not values:
        raise RuntimeError("no timings to take a percentile of")
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


# --- Clients -----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the clients saw, merged across threads under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    next_ms: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)
    handed: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # user → tasks
    submitted: dict[int, int] = field(default_factory=dict)  # assignment → annotation
    errors: list[str] = field(default_factory=list)
    empty: int = 0  # 204s: nothing left for the caller
    requests: int = 0  # every request sent, retries included


@dataclass
class Answer:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class Http:
    """A lean HTTP client (the standard library's http.client) with one API token.

    32 simulated annotators share this machine's two cores with the server they measure, and
    with `requests` their client work cost about 3 ms of CPU per request, a quarter of the total:
    time real annotators spend on their own machines. This client does what a browser's fetch
    does (one request per connection, since gunicorn's sync workers close each one) in a
    fraction of the CPU, so the latency figures weigh the server, not the harness.
    """

    def __init__(self, token: str) -> None:
        self.headers = {"Authorization": f"Token {token}", "Accept": "application/json"}

    def _send(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> Answer:
        parts = urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
        try:
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            connection.request(method, target, body=body, headers={**self.headers, **headers})
            response = connection.getresponse()
            return Answer(response.status, response.read())
        finally:
            connection.close()

    def post(self, url: str, json_body: Any = None, headers: dict[str, str] | None = None) -> Answer:
        extra = dict(headers or {})
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            extra["Content-Type"] = "application/json"
        return self._send("POST", url, body, extra)

    def get(self, url: str) -> Answer:
        return self._send("GET", url, None, {})


class Annotator:
    """One annotator's client, with the annotator's token."""

    def __init__(self, base: str, project_id: int, user_id: int, token: str) -> None:
        self.base = f"{base}/api/v1/projects/{project_id}"
        self.user_id = user_id
        self.session = Http(token)
        self.rng = random.Random(user_id)  # noqa: S311  (synthetic work, not secrets)

    def next(self, tally: Tally) -> dict[str, Any] | None:
        started = time.perf_counter()
        response = self.session.post(f"{self.base}/next")
        elapsed = (time.perf_counter() - started) * 1000
        with tally.lock:
            tally.requests += 1
        if response.status_code == 204:
            with tally.lock:
                tally.empty += 1
            return None
        if response.status_code != 200:
            raise RuntimeError(f"next answered {response.status_code}: {response.text[:300]}")
        body: dict[str, Any] = response.json()
        with tally.lock:
            tally.next_ms.append(elapsed)
            tally.handed[self.user_id].append(body["task"]["id"])
        return body

    def submit(self, handed: dict[str, Any], tally: Tally, *, retry: bool = False) -> None:
        assignment = handed["assignment"]
        x, y = self.rng.uniform(0, 500), self.rng.uniform(0, 380)
        body = {
            "lease_id": assignment["lease_id"],
            "lead_time_ms": self.rng.randrange(2_000, 60_000),
            "result": [
                {
                    "id": "r1",
                    "type": "bbox",
                    "label": "car",
                    "geometry": {"x": x, "y": y, "width": 40.0, "height": 30.0},
                }
            ],
        }
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        url = f"{self.base}/assignments/{assignment['id']}/submit"
        started = time.perf_counter()
        response = self.session.post(url, body, headers)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 201:
            raise RuntimeError(f"submit answered {response.status_code}: {response.text[:300]}")
        annotation = response.json()["id"]
        with tally.lock:
            tally.submit_ms.append(elapsed)
            tally.submitted[assignment["id"]] = annotation
            tally.requests += 1 + retry
        if retry:  # a client that timed out sends the same request again
            again = self.session.post(url, body, headers)
            if again.status_code not in (200, 201) or again.json()["id"] != annotation:
                with tally.lock:
                    tally.errors.append(
                        f"retried submit of assignment {assignment['id']}: {again.status_code} "
                        f"{again.text[:200]} (first: annotation {annotation})"
                    )

    def cycle(self, rounds: int, tally: Tally, *, think_s: float, retry_every: int = 0) -> None:
        for n in range(rounds):
            if think_s:
                time.sleep(self.rng.expovariate(1 / think_s))
            handed = self.next(tally)
            if handed is None:
                return
            self.submit(handed, tally, retry=retry_every > 0 and n % retry_every == retry_every - 1)


def _together(work: list[Any]) -> float:
    """Run the callables in threads started at once; returns the wall time; raises the first error."""
    failures: list[BaseException] = []
    gate = threading.Barrier(len(work) + 1)

    def run(job: Any) -> None:
        gate.wait()
        try:
            job()
        except BaseException as error:  # re-raised in the caller's thread
            failures.append(error)

    threads = [threading.Thread(target=run, args=(job,), daemon=True) for job in work]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        raise failures[0]
    return wall


# --- Set-up ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    project_id: int
    manager_token: str
    annotators: list[tuple[int, str]]  # (user id, token)


def _setup(tasks: int) -> Setup:
    from django.contrib.auth.models import User
    from django.db import connection

    from labeling.services import schema_publish, tasks_ensure
    from labeling.workflow import workflow_update
    from projects import services as project_services
    from projects.access import org_access, project_access
    from storage.models import Blob, Dataset, Item

    owner = User.objects.create_user(username="bench")
    org = project_services.organization_create(actor=owner, name="Bench", slug="bench")
    project = project_services.project_create(
        actor=owner, access=org_access(user=owner, organization_id=org.pk), name="Queue"
    )
    access = project_access(user=owner, project_id=project.pk)
    schema_publish(actor=owner, access=access, spec=SPEC)
    workflow_update(actor=owner, access=access, changes={"overlap": OVERLAP})
    _, manager_token = project_services.api_token_create(user=owner, name="bench")

    annotators: list[tuple[int, str]] = []
    for n in range(CLIENTS):
        user = User.objects.create_user(username=f"annotator{n:02d}")
        project_services.membership_add(
            actor=owner, access=org_access(user=owner, organization_id=org.pk), username=user.username,
            role="member",
        )  # fmt: skip
        project_services.project_member_add(
            actor=owner, access=project_access(user=owner, project_id=project.pk), username=user.username,
            role="annotator",
        )  # fmt: skip
        _, token = project_services.api_token_create(user=user, name="bench")
        annotators.append((user.pk, token))

    dataset = Dataset.objects.create(organization=org, name="frames")
    dataset.projects.add(project)
    blob = Blob.objects.create(
        sha256="0" * 64, size=1, media_type="image/jpeg", key="blobs/00/00/" + "0" * 64
    )
    Item.objects.bulk_create(
        (
            Item(dataset=dataset, name=f"frames/{i:06d}.jpg", modality="image", media_type="image/jpeg",
                 meta={"width": 640, "height": 480}, primary=blob)
            for i in range(tasks)
        ),
        batch_size=5000,
    )  # fmt: skip
    created = tasks_ensure(project.pk)
    if created != tasks:
        raise RuntimeError(f"tasks_ensure created {created} tasks, expected {tasks}")
    with connection.cursor() as cursor:
        for table in ("storage_item", "labeling_task", "labeling_assignment", "labeling_annotation"):
            cursor.execute(f"VACUUM ANALYZE {table}")
    return Setup(project_id=project.pk, manager_token=manager_token, annotators=annotators)


def _set_max_active(project_id: int, max_active: int) -> None:
    from django.contrib.auth.models import User

    from labeling.workflow import workflow_update
    from projects.access import project_access

    owner = User.objects.get(username="bench")
    access = project_access(user=owner, project_id=project_id)
    workflow_update(actor=owner, access=access, changes={"max_active": max_active})


# --- Web server ----------------------------------------------------------------------------------


def _start_web(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    argv = web_argv(port, ["--workers", str(WEB_WORKERS)])
    with log.open("wb") as output:
        web = subprocess.Popen(argv, env={**child_env(), **env}, stdout=output, stderr=subprocess.STDOUT)

    def check() -> None:
        if web.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {web.returncode}:\n{log.read_text()[-3000:]}")

    try:
        wait_for_ready(port, timeout=60, check=check)
    except BaseException:
        _stop(web)
        raise
    return web, port


class _CpuMeter:
    """CPU seconds of gunicorn (master and workers), of the PostgreSQL backends of the bench database,
    of this process (the clients) and of the whole machine, sampled in a thread so that processes
    which come and go (a worker reconnecting after CONN_MAX_AGE) are counted too.

    Finding the processes walks /proc (~10 ms of this process's CPU, holding the GIL the clients'
    timers need), so it runs every DISCOVER_EVERY samples and at each mark; the samples between
    only read the processes already found (~0.05 ms)."""

    INTERVAL_S = 0.25
    DISCOVER_EVERY = 8

    def __init__(self, web_pid: int) -> None:
        self.web = psutil.Process(web_pid)
        self.me = psutil.Process()
        self.seen: dict[str, dict[int, float]] = {"web": {}, "db": {}}
        self.known: dict[str, list[psutil.Process]] = {"web": [], "db": []}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._sample(discover=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _cpu(process: psutil.Process) -> float | None:
        try:
            times = process.cpu_times()
        except psutil.Error:
            return None
        return float(times.user + times.system)

    def _discover(self) -> dict[str, list[psutil.Process]]:
        try:
            web = [self.web, *self.web.children(recursive=True)]
        except psutil.Error:
            web = []
        db = []
        for process in psutil.process_iter(["name", "cmdline"]):
            command = " ".join(process.info["cmdline"] or [])
            if (process.info["name"] or "").startswith("postgres") and f" {BENCH_DB} " in command:
                db.append(process)
        return {"web": web, "db": db}

    def _sample(self, discover: bool) -> None:
        with self.lock:
            if discover:
                self.known = self._discover()
            for group, processes in self.known.items():
                for process in processes:
                    if (cpu := self._cpu(process)) is not None:
                        self.seen[group][process.pid] = cpu

    def _run(self) -> None:
        samples = 0
        while not self._stop.wait(self.INTERVAL_S):
            samples += 1
            self._sample(discover=samples % self.DISCOVER_EVERY == 0)

    def mark(self) -> dict[str, float]:
        """Cumulative CPU seconds per group; subtract two marks for a phase."""
        self._sample(discover=True)
        machine = psutil.cpu_times()
        busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq
        with self.lock:
            totals = {group: sum(values.values()) for group, values in self.seen.items()}
        me = self.me.cpu_times()
        totals["clients"] = me.user + me.system
        totals["machine"] = busy
        totals["wall"] = time.monotonic()
        return totals

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    spent = {key: after[key] - before[key] for key in before}
    spent["other"] = spent["machine"] - spent["web"] - spent["db"] - spent["clients"]
    return spent


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- Checks against the database -----------------------------------------------------------------


def _client_duplicates(tally: Tally) -> int:
    """Tasks handed twice to one user, and task slots handed beyond the overlap, as the clients saw them."""
    twice = sum(len(tasks) - len(set(tasks)) for tasks in tally.handed.values())
    users_per_task: Counter[int] = Counter()
    for tasks in tally.handed.values():
        users_per_task.update(set(tasks))
    beyond = sum(count - OVERLAP for count in users_per_task.values() if count > OVERLAP)
    return twice + beyond


def _server_duplicates(project_id: int) -> int:
    from django.db import connection

    checks = [
        # more live leases plus submissions than the overlap
        """SELECT count(*) FROM (
               SELECT t.id FROM labeling_task t JOIN labeling_assignment a ON a.task_id = t.id
               WHERE t.project_id = %(p)s AND a.state IN ('active', 'submitted')
               GROUP BY t.id, t.overlap HAVING count(*) > t.overlap) over_overlap""",
        # one author, two submitted annotations of one task
        """SELECT count(*) FROM (
               SELECT n.task_id FROM labeling_annotation n JOIN labeling_task t ON t.id = n.task_id
               WHERE t.project_id = %(p)s AND n.state = 'submitted' AND n.deleted_at IS NULL
               GROUP BY n.task_id, n.author_id HAVING count(*) > 1) twice""",
        # the counters the queue relies on disagree with the assignments
        """SELECT count(*) FROM labeling_task t
           LEFT JOIN LATERAL (
               SELECT count(*) FILTER (WHERE a.state = 'active') AS active,
                      count(*) FILTER (WHERE a.state = 'submitted') AS submitted
               FROM labeling_assignment a WHERE a.task_id = t.id) c ON true
           WHERE t.project_id = %(p)s
             AND (t.active <> c.active OR t.submitted <> c.submitted
                  OR (t.state NOT IN ('accepted', 'done', 'in_review')
                      AND t.open_slots <> greatest(t.overlap - c.active - c.submitted, 0)))""",
    ]
    found = 0
    with connection.cursor() as cursor:
        for sql in checks:
            cursor.execute(sql, {"p": project_id})
            row = cursor.fetchone()
            found += int(row[0]) if row else 0
    return found


def _lost_submits(tallies: list[Tally]) -> int:
    from labeling.models import Annotation, Assignment

    seen = {assignment: annotation for tally in tallies for assignment, annotation in tally.submitted.items()}
    held = dict(
        Assignment.objects.filter(id__in=list(seen), state="submitted").values_list("id", "annotation_id")
    )
    submitted = set(
        Annotation.objects.filter(
            id__in=list(seen.values()), state="submitted", deleted_at__isnull=True
        ).values_list("id", flat=True)
    )
    return sum(1 for a, n in seen.items() if held.get(a) != n or n not in submitted)


# --- Phases ------------------------------------------------------------------------------------


def _clients(base: str, setup: Setup, count: int) -> list[Annotator]:
    return [Annotator(base, setup.project_id, user, token) for user, token in setup.annotators[:count]]


def _submit_burst(
    base: str, setup: Setup, per_client: int, cpu: _CpuMeter
) -> tuple[Tally, float, dict[str, float]]:
    """8 clients take `per_client` leases each, then submit them all at once: only submits timed."""
    clients = _clients(base, setup, 8)
    _set_max_active(setup.project_id, per_client)
    leases: list[list[dict[str, Any]]] = []
    taking = Tally()
    for client in clients:
        mine: list[dict[str, Any]] = []
        for _ in range(per_client):
            handed = client.next(taking)
            if handed is None:
                raise RuntimeError("the queue ran dry while taking leases")
            mine.append(handed)
        if len({h["assignment"]["id"] for h in mine}) != per_client:
            raise RuntimeError("next handed the same lease again below max_active")
        leases.append(mine)
    _set_max_active(setup.project_id, 1)
    tally = Tally()
    tally.handed = taking.handed

    def submit_all(client: Annotator, mine: list[dict[str, Any]]) -> Any:
        def run() -> None:
            for handed in mine:
                client.submit(handed, tally)

        return run

    began = cpu.mark()
    wall = _together([submit_all(c, m) for c, m in zip(clients, leases, strict=True)])
    return tally, wall, _spent(began, cpu.mark())


def _task_list(base: str, setup: Setup, pages: int) -> list[float]:
    session = Http(setup.manager_token)
    first = f"{base}/api/v1/projects/{setup.project_id}/tasks?page_size=100"
    url = first
    for _ in range(5):  # warm up
        session.get(first)
    timings: list[float] = []
    for _ in range(pages):
        started = time.perf_counter()
        response = session.get(url)
        timings.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"task list answered {response.status_code}: {response.text[:300]}")
        body = response.json()
        if len(body["results"]) != 100 and body["next"]:
            raise RuntimeError(f"a task list page held {len(body['results'])} tasks")
        url = body["next"] or first
    return timings


def _measure(base: str, setup: Setup, scale: Scale, cpu: _CpuMeter) -> list[Figure]:
    warm = Tally()  # every worker process and its database connection warmed, not timed
    _together([lambda c=c: c.cycle(2, warm, think_s=0) for c in _clients(base, setup, CLIENTS)])

    began = cpu.mark()
    paced = Tally()
    clients = _clients(base, setup, CLIENTS)
    _together([
        lambda c=c: c.cycle(scale.next_per_client, paced, think_s=THINK_S, retry_every=RETRY_EVERY)
        for c in clients
    ])  # fmt: skip
    paced_cpu = _spent(began, cpu.mark())
    saturated = Tally()
    _together([lambda c=c: c.cycle(scale.saturated_per_client, saturated, think_s=0) for c in clients])

    single = Tally()
    _clients(base, setup, 1)[0].cycle(scale.submit_1c, single, think_s=0)

    burst, burst_wall, burst_cpu = _submit_burst(base, setup, scale.submit_8c_per_client, cpu)

    cycles = Tally()
    cycle_wall = _together([
        lambda c=c: c.cycle(scale.cycle_8c_per_client, cycles, think_s=0) for c in _clients(base, setup, 8)
    ])  # fmt: skip

    listed = _task_list(base, setup, scale.list_pages)
    whole = _spent(began, cpu.mark())

    if whole["other"] / whole["wall"] > 0.2:
        print(
            f"# other processes kept {whole['other'] / whole['wall']:.2f} cores busy during the measurement: "
            "the figures are pessimistic",
            file=sys.stderr,
        )
    tallies = [warm, paced, saturated, single, burst, cycles]
    errors = [error for tally in tallies for error in tally.errors]
    if errors:
        print(f"# {len(errors)} retried submits misbehaved, e.g. {errors[0]}", file=sys.stderr)
    if any(tally.empty for tally in tallies):
        raise RuntimeError("the queue ran dry: the scale asks for more tasks than it has")
    merged = Tally()
    for tally in tallies:
        for user, tasks in tally.handed.items():
            merged.handed[user].extend(tasks)
    duplicates = _client_duplicates(merged) + _server_duplicates(setup.project_id)
    lost = _lost_submits(tallies) + len(errors)

    next_p95 = _percentile(paced.next_ms, 0.95)
    submit_1c_p95 = _percentile(single.submit_ms, 0.95)
    submit_8c_rate = len(burst.submit_ms) / burst_wall
    list_p95 = _percentile(listed, 0.95)
    return [
        Figure("next_task_p50_ms", _percentile(paced.next_ms, 0.50), "ms"),
        Figure("next_task_p95_ms", next_p95, "ms"),
        Figure("next_task_p99_ms", _percentile(paced.next_ms, 0.99), "ms"),
        Figure("next_task_saturated_p95_ms", _percentile(saturated.next_ms, 0.95), "ms"),
        Figure("next_task_1c_p95_ms", _percentile(single.next_ms, 0.95), "ms"),
        Figure("submit_1c_p95_ms", submit_1c_p95, "ms"),
        Figure("submit_8c_per_s", submit_8c_rate, "submits/s"),
        Figure("submit_8c_p95_ms", _percentile(burst.submit_ms, 0.95), "ms"),
        Figure("tasks_8c_per_s", len(cycles.submit_ms) / cycle_wall, "tasks/s"),
        Figure("task_list_p95_ms", list_p95, "ms"),
        Figure("duplicate_slots", duplicates, "count"),
        Figure("lost_submits", lost, "count"),
        Figure("next_task_goal_ratio", 20 / next_p95, "x"),
        Figure("submit_1c_goal_ratio", 30 / submit_1c_p95, "x"),
        Figure("submit_8c_goal_ratio", submit_8c_rate / 150, "x"),
        Figure("task_list_goal_ratio", 50 / list_p95, "x"),
        Figure("web_cpu_ms_per_request", 1000 * paced_cpu["web"] / paced.requests, "ms"),
        Figure("db_cpu_ms_per_request", 1000 * paced_cpu["db"] / paced.requests, "ms"),
        Figure("client_cpu_ms_per_request", 1000 * paced_cpu["clients"] / paced.requests, "ms"),
        Figure("submit_web_cpu_ms", 1000 * burst_cpu["web"] / len(burst.submit_ms), "ms"),
        Figure("submit_db_cpu_ms", 1000 * burst_cpu["db"] / len(burst.submit_ms), "ms"),
        Figure(
            "submit_per_s_2_cores",
            2 * len(burst.submit_ms) / (burst_cpu["web"] + burst_cpu["db"]),
            "submits/s",
        ),
        Figure("other_cpu_cores", whole["other"] / whole["wall"], "cores"),
    ]


def run(scale: str) -> list[Figure]:
    chosen = SCALES[scale]
    home = Path(tempfile.mkdtemp(prefix="lbq", dir="/tmp"))
    with mock.patch.object(ingest, "BENCH_DB", BENCH_DB):  # our own database, not `loupe_bench`
        env, stop_services = ingest._database_env(home)
    web = None
    try:
        env.update({
            "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only"), "LOUPE_HOME": str(home),
            "LOUPE_STORAGE": "local", "LOUPE_OBJECTS_DIR": str(home / "objects"),
            "DJANGO_SETTINGS_MODULE": "config.settings", "LOUPE_THROTTLE_USER": "1000000/min",
        })  # fmt: skip
        os.environ.update(env)
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", verbosity=0)
        setup = _setup(chosen.tasks)
        connections.close_all()
        web, port = _start_web(env, home / "web.log")
        print(f"# gunicorn pid {web.pid} on port {port}, log {home / 'web.log'}", file=sys.stderr, flush=True)
        cpu = _CpuMeter(web.pid)
        try:
            return _measure(f"http://127.0.0.1:{port}", setup, chosen, cpu)
        finally:
            cpu.stop()
    finally:
        if web is not None:
            _stop(web)
        if stop_services is not None:
            stop_services()
