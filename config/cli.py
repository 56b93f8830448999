"""The `loupe` command.

    loupe up [--port N]          everything on one machine: embedded PostgreSQL and Redis (for
                                 whichever of DATABASE_URL / REDIS_URL is unset), migrations, an
                                 admin account, then web + worker + beat, supervised
    loupe web|worker|beat ...    one production process in the foreground; extra arguments go to
                                 gunicorn / celery (e.g. `loupe worker -Q prelabel -c 1`)
    loupe migrate                apply database migrations
    loupe createuser NAME ...    create an account and print a one-time API token
    loupe manage ...             any manage.py command
    loupe pull PROJECT[@RELEASE] --format F --out DIR
                                 download a released dataset (the client in loupe_client/;
                                 talks to a server over HTTP, needs no Django settings)

The helpers in the middle section (readiness wait, credentials, HTTP probe, spawning `loupe up`)
are also what the tests and the benchmarks use, so all three agree on what "ready" means.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

from django.core.exceptions import ImproperlyConfigured

from config.embedded import EmbeddedServiceError, EmbeddedServices, exit_code, spawn, stop_processes
from projects.credentials import read_credentials

logger = logging.getLogger("loupe")

SETTINGS_MODULE = "config.settings"
DEFAULT_PORT = 8000
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
# Variables that select production services; `up_spawn_embedded` removes them.
SERVICE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY")


class UpError(RuntimeError):
    """`loupe up` cannot go on; the message names the process or step that failed."""


class _Stop(Exception):
    """SIGINT or SIGTERM arrived: shut down in order and exit 0."""


# --- command lines ----------------------------------------------------------------------------------


def manage_argv(*args: str) -> list[str]:
    """manage.py from the checkout when there is one, else `python -m django` (installed package)."""
    manage_py = Path(__file__).resolve().parent.parent / "manage.py"
    if manage_py.exists():
        return [sys.executable, str(manage_py), *args]
    return [sys.executable, "-m", "django", *args]


def web_argv(port: int, extra: Sequence[str] = ()) -> list[str]:
    # gunicorn adds up repeated -b flags instead of keeping the last, so ours goes only when the
    # caller chose no address; for every other option the caller's later value wins.
    binds = any(arg in ("-b", "--bind") or arg.startswith(("-b", "--bind=")) for arg in extra)
    bind = [] if binds else ["-b", f"127.0.0.1:{port}"]
    return [
        sys.executable, "-m", "gunicorn", "config.wsgi:application", *bind,
        "--workers", "2", "--timeout", "60", "--access-logfile", "-", *extra,
    ]  # fmt: skip


def worker_argv(extra: Sequence[str] = ()) -> list[str]:
    from config import settings

    return [
        sys.executable, "-m", "celery", "-A", "config", "worker",
        "-Q", ",".join(settings.LOUPE_QUEUES), "--concurrency", "2", "-n", "loupe@%h", *extra,
    ]  # fmt: skip


def beat_argv(extra: Sequence[str] = ()) -> list[str]:
    from config import settings

    schedule = Path(settings.CELERY_BEAT_SCHEDULE_FILENAME)
    schedule.parent.mkdir(parents=True, exist_ok=True)
    return [sys.executable, "-m", "celery", "-A", "config", "beat", "-s", str(schedule), *extra]


def child_env(home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    env["PYTHONUNBUFFERED"] = "1"  # children's logs interleave in order with ours
    if home is not None:
        env["LOUPE_HOME"] = str(home)  # absolute, so every child agrees whatever its cwd
    return env


def _exec(argv: list[str]) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, child_env())  # noqa: S606  (argv is built here, never from a shell string)


def _port_from_env() -> int:
    from config.env import env_int

    return env_int("LOUPE_PORT", DEFAULT_PORT, minimum=1, maximum=65535)


# --- helpers shared with tests and benchmarks --------------------------------------------------------


def http_get(port: int, path: str, *, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET http://127.0.0.1:`port``path`; returns (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Authorization": f"Token {token}"} if token else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_for_ready(port: int, *, timeout: float, check: Callable[[], None] | None = None) -> float:
    """Poll /readyz until it answers 200; returns the seconds waited.

    `check` runs before every poll and raises to give up early (a child died, a signal came).
    """
    began = time.monotonic()
    last = "no answer yet"
    while True:
        if check is not None:
            check()
        try:
            status, body = http_get(port, "/readyz", timeout=2.0)
        except (OSError, http.client.HTTPException) as error:
            last = f"{type(error).__name__}: {error}"  # refused while gunicorn boots
        else:
            if status == 200:
                return time.monotonic() - began
            last = f"HTTP {status}: {body[:300].decode(errors='replace')}"
        if time.monotonic() - began > timeout:
            raise UpError(
                f"http://127.0.0.1:{port}/readyz did not answer 200 within {timeout:.0f} s (last: {last})"
            )
        time.sleep(0.25)


def read_token(path: Path) -> str:
    """The admin token `loupe_bootstrap` wrote to the credentials file."""
    token = read_credentials(path).get("LOUPE_TOKEN")
    if not token:
        raise UpError(f"{path} has no LOUPE_TOKEN line")
    return token


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def up_spawn_embedded(*, home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start `loupe up` as a child on `home` with every service embedded, whatever our environment says.

    For tests and benchmarks: its output goes to `log`; wait with `up_wait_ready`, stop it with
    SIGTERM and expect exit code 0.
    """
    env = {key: value for key, value in child_env(home).items() if key not in SERVICE_VARIABLES}
    with log.open("wb") as output:
        return spawn(
            [sys.executable, "-m", "config.cli", "up", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def up_wait_ready(process: subprocess.Popen[bytes], port: int, *, log: Path, timeout: float = 180.0) -> float:
    """`wait_for_ready` for a `loupe up` child; if it exits first, raise with the end of its output."""

    def check() -> None:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:]
            raise UpError(f"loupe up exited with code {process.returncode} before it was ready:\n{tail}")

    return wait_for_ready(port, timeout=timeout, check=check)


# --- loupe up ----------------------------------------------------------------------------------------


def secret_key_ensure(path: Path) -> None:
    """Write a random key once; later starts keep it, so sessions and signed values stay valid."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(50) + "\n")


class Supervisor:
    """The children of `loupe up`, named, so failures and shutdown can say which one."""

    def __init__(self, env: Mapping[str, str], services: EmbeddedServices) -> None:
        self.env = env
        self.services = services
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.step: str | None = None  # the one-off child `run` is waiting for, expected to exit
        self.stop_signal: int | None = None

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only record it: the main loop stops children in order, never from inside a handler.
        self.stop_signal = signum

    def check(self) -> None:
        """Raise _Stop on a signal, UpError if a child or a service we started has died."""
        if self.stop_signal is not None:
            raise _Stop
        for name, child in self.children.items():
            # Left unreaped: stop() then also kills whatever it left behind in its group.
            if name != self.step and (code := exit_code(child)) is not None:
                raise UpError(f"{name} exited unexpectedly with code {code}")
        dead = self.services.dead()
        if dead is not None:
            raise UpError(f"embedded {dead} stopped unexpectedly")

    def start(self, name: str, argv: list[str]) -> None:
        self.children[name] = spawn(argv, env=self.env)

    def run(self, name: str, argv: list[str]) -> None:
        """Run a one-off step (migrate, bootstrap) to completion, still interruptible by signals."""
        self.start(name, argv)
        child = self.children[name]
        self.step = name
        while exit_code(child) is None:
            self.check()
            time.sleep(0.1)
        self.step = None
        del self.children[name]
        if child.wait() != 0:
            raise UpError(f"{name} failed with exit code {child.returncode} (its output is above)")

    def stop(self) -> None:
        stop_processes(list(self.children.values()), timeout=STOP_TIMEOUT_S)
        self.children.clear()


def up(port: int) -> int:
    from config import settings
    from config.embedded import services_start_from_settings

    began = time.monotonic()
    home: Path = settings.LOUPE_HOME
    home.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("SECRET_KEY"):  # settings insists on one in production, so: embedded
        secret_key_ensure(home / "secret_key")
    credentials = home / "credentials"
    url = f"http://127.0.0.1:{port}"

    services = EmbeddedServices()
    supervisor = Supervisor(child_env(home), services)
    signal.signal(signal.SIGINT, supervisor.on_signal)
    signal.signal(signal.SIGTERM, supervisor.on_signal)
    try:
        services = supervisor.services = services_start_from_settings()
        supervisor.run("migrate", manage_argv("migrate", "--noinput"))
        supervisor.run(
            "bootstrap", manage_argv("loupe_bootstrap", "--url", url, "--credentials", str(credentials))
        )
        supervisor.start("web", web_argv(port))
        supervisor.start("worker", worker_argv())
        supervisor.start("beat", beat_argv())
        wait_for_ready(port, timeout=READY_TIMEOUT_S, check=supervisor.check)
        token = read_token(credentials)
        print(
            f"\nLoupe is ready at {url}/ (started in {time.monotonic() - began:.1f} s)\n"
            f"  API token:   {token}\n"
            f"  credentials: {credentials} (LOUPE_URL, LOUPE_TOKEN)\n"
            f"  data:        {home}\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        while True:
            supervisor.check()
            time.sleep(0.5)
    except _Stop:
        logger.info("received %s, stopping", signal.Signals(supervisor.stop_signal or signal.SIGTERM).name)
        return 0
    except (UpError, EmbeddedServiceError) as error:
        logger.error("%s; stopping everything", error)
        return 1
    finally:
        try:
            supervisor.stop()
        finally:
            services.stop()
        logger.info("stopped")


# --- entry point ---------------------------------------------------------------------------------------

# Commands that hand every argument after their name on to the program they run.
PASSTHROUGH: dict[str, Callable[[list[str]], list[str]]] = {
    "web": lambda extra: web_argv(_port_from_env(), extra),
    "worker": worker_argv,
    "beat": beat_argv,
    "migrate": lambda extra: manage_argv("migrate", "--noinput", *extra),
    "createuser": lambda extra: manage_argv("loupe_createuser", *extra),
    "manage": lambda extra: manage_argv(*extra),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loupe", description="Loupe: data-centric labeling platform backend."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up_parser = commands.add_parser("up", help="run everything on this machine (embedded services)")
    up_parser.add_argument(
        "--port", type=int, default=None, help="HTTP port on 127.0.0.1 (default $LOUPE_PORT or 8000)"
    )
    # Listed for --help only: main() hands their arguments on untouched.
    passthrough_help = {
        "web": "gunicorn in the foreground; extra arguments go to gunicorn",
        "worker": "a Celery worker; extra arguments go to `celery worker` (e.g. -Q prelabel -c 1)",
        "beat": "Celery beat; extra arguments go to `celery beat`",
        "migrate": "apply database migrations",
        "createuser": "USERNAME [--email E] [--superuser] [--token-name N]: create an account and "
        "print a one-time API token",
        "manage": "any manage.py command",
    }
    for name, text in passthrough_help.items():
        commands.add_parser(name, help=text, add_help=False)
    commands.add_parser(
        "pull", help="download a released dataset in a training format (`loupe pull --help`)", add_help=False
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "pull":  # the client: HTTP only, never Django
        from loupe_client.cli import main as client_main

        return client_main(args)
    try:
        if args and args[0] in PASSTHROUGH:
            _exec(PASSTHROUGH[args[0]](args[1:]))
        options = build_parser().parse_args(args)  # only `up` is left, or --help, or a usage error
        if options.port is not None and not 0 < options.port < 65536:
            build_parser().error(f"--port must be between 1 and 65535, got {options.port}")
        logging.basicConfig(level=logging.INFO, format="loupe: %(message)s")
        return up(options.port if options.port is not None else _port_from_env())
    except ImproperlyConfigured as error:
        print(f"loupe: configuration error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
