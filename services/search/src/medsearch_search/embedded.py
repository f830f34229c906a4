"""A real Milvus engine on one machine: the embedded Milvus server of the PyPI package `milvus`.

`make run`, the tests and the benchmarks start it with its data in a folder of their own
(segments, write-ahead log, metadata), so that everything runs on one machine without Docker.
It is Milvus standalone (2.3) as one process: its own etcd inside, RocksDB as the write-ahead
log (an upsert is acknowledged once it is in the log: it survives a kill -9 of the engine),
local files for the segments.

The package's own launcher fixes the embedded etcd's ports (2379/2380): two engines on one
machine would collide. Here the etcd ports are chosen free on the first start and kept in the
folder (`ports.json`), so that a restart finds its etcd member where it left it. A previous
engine of the same folder that outlived its parent (a kill -9 of `make run`) is stopped first:
it holds the folder's RocksDB lock.

Authentication is on. Milvus 2.3 binds its proxy (and its internal ports) on every network
interface, whatever its configured address, so without it anyone who can reach the machine
could read every vector and its attributes (patient IDs among them). Milvus creates its `root`
user with the well-known password `Milvus`; the first start replaces it with a random one kept
in the folder (`root-password`, readable by its owner only), and `token` is what a client sends.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import time
from pathlib import Path
from typing import Any

import grpc
from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from medsearch_common.secret_file import create_secret_file

DEFAULT_PORT = 19530
_START_TIMEOUT_MS = 180_000
_STOP_GRACE_S = 15.0
# Milvus's proxy publishes a time tick every 200 ms by default; a strong or session search
# waits for the tick after the writes it must see. 50 ms makes that wait four times shorter
# for ~4 % more of a core while idle (9 % against 5 %, measured here).
TIME_TICK_MS = 50
# After a crash the new process waits for the dead one's etcd sessions to lapse (30 s by
# default, ~55 s to restart in all); 10 s still spans any pause of a busy 2-core machine.
SESSION_TTL_S = 10
# A search visits every segment's own HNSW graph, so the segment count sets its floor. By
# default Milvus 2.3 seals a segment at 23 % of 512 MB (~14,000 rows of 2048-d vectors): eight
# graphs for ChestX-ray14, and 19 ms a search. Sealed at 90 % of 1 GB they hold ~75,000 rows (the
# data node's binlog count then seals them): two graphs, 8 ms at the same recall (ef 128, bench-search).
SEGMENT_MAX_MB = 1024
SEGMENT_SEAL_PROPORTION = 0.9
ENGINE_CONFIG: dict[str, Any] = {
    "proxy.timeTickInterval": TIME_TICK_MS,
    "common.session.ttl": SESSION_TTL_S,
    "dataCoord.segment.maxSize": SEGMENT_MAX_MB,
    "dataCoord.segment.sealProportion": SEGMENT_SEAL_PROPORTION,
}
ROOT_USER = "root"
MILVUS_DEFAULT_PASSWORD = "Milvus"  # noqa: S105 (Milvus's own, replaced at the first start)
PASSWORD_FILE = "root-password"  # noqa: S105 (a file name)


def accepts(uri: str, token: str) -> bool:
    """Whether the Milvus server at `uri` lets a client with this token ("" for none) list
    its collections."""
    try:
        client = MilvusClient(uri=uri, token=token, timeout=30)
    except MilvusException:
        return False
    try:
        client.list_collections(timeout=30)
    except (MilvusException, grpc.RpcError):
        return False
    finally:
        client.close()
    return True


def _free_port() -> int:
    """A free port below Linux's ephemeral range, where outgoing connections never take it."""
    for _ in range(1000):
        port = random.randint(20_000, 32_000)
        if _port_free(port):
            return port
    raise RuntimeError("no free port for the embedded Milvus's etcd")


def _bind(port: int) -> socket.socket | None:
    """A socket listening on the port, or None when taken. SO_REUSEADDR, as etcd and Milvus
    bind (Go sets it): a port in TIME_WAIT is free to them."""
    probe = socket.socket()
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("127.0.0.1", port))
        probe.listen()
    except OSError:
        probe.close()
        return None
    return probe


def _port_free(port: int) -> bool:
    probe = _bind(port)
    if probe is None:
        return False
    probe.close()
    return True


class EmbeddedMilvus:
    """One Milvus standalone process whose data lives in `folder`."""

    def __init__(self, folder: Path, port: int = DEFAULT_PORT) -> None:
        self.folder = folder.resolve()
        self.requested_port = port
        self._server: Any = None
        self._password: str | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the embedded Milvus server is not running")
        return int(self._server.listen_port)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        """`user:password`, what a client sends (MEDSEARCH_MILVUS_TOKEN for the search service)."""
        if self._password is None:
            raise RuntimeError("the embedded Milvus server is not running")
        return f"{ROOT_USER}:{self._password}"

    @property
    def pid(self) -> int | None:
        process = self._server.server_proc if self._server is not None else None
        return int(process.pid) if process is not None else None

    def start(self) -> str:
        """Start it and wait until it serves; returns its URI. Raises RuntimeError if it cannot."""
        from milvus import MilvusServer  # only where an embedded engine is wanted

        self.folder.mkdir(parents=True, exist_ok=True)
        self._stop_orphan()
        etcd = self._etcd_ports()
        etcd_config = self.folder / "etcd.yaml"
        etcd_config.write_text(
            f"listen-client-urls: http://127.0.0.1:{etcd['client']}\n"
            f"advertise-client-urls: http://127.0.0.1:{etcd['client']}\n"
            f"listen-peer-urls: http://127.0.0.1:{etcd['peer']}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{etcd['peer']}\n"
            f"initial-cluster: default=http://127.0.0.1:{etcd['peer']}\n"
        )
        server = MilvusServer(wait_for_started=False)
        server.set_base_dir(str(self.folder))
        server.config.set("etcd_port", etcd["client"])
        # The package binds the first free port from the one given: say so if it moved.
        server.config.set("proxy_port", self.requested_port)
        server.config.set("authorization_enabled", True)
        for key, value in ENGINE_CONFIG.items():
            server.config.set(key, value)
        # Its port probe ignores SO_REUSEADDR, so a port in TIME_WAIT would seem taken and the
        # engine would move to the next one at each restart.
        server.config.try_bind_port = _bind
        # The launcher copies our environment into the server's: these reach Milvus's config.
        saved = {key: os.environ.get(key) for key in ("ETCD_CONFIG_PATH",)}
        os.environ["ETCD_CONFIG_PATH"] = str(etcd_config)
        try:
            server.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        self._server = server
        (self.folder / "milvus.pid").write_text(str(server.server_proc.pid))
        try:
            server.wait_started(timeout=_START_TIMEOUT_MS)
        except Exception as exc:
            log = self.folder / "logs" / "milvus-stderr.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            self.stop()
            raise RuntimeError(f"the embedded Milvus server did not start: {exc}\n{tail}") from exc
        if server.server_proc.poll() is not None:
            self._server = None
            raise RuntimeError(f"the embedded Milvus server exited at start; see {self.folder / 'logs'}")
        try:
            self._password = self._own_password()
        except RuntimeError:
            self.stop()
            raise
        return self.uri

    def stop(self) -> None:
        """Stop it gracefully (it flushes), or kill it when it does not stop in time."""
        if self._server is None:
            return
        process = self._server.server_proc
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_GRACE_S)
            except Exception:
                process.kill()
                process.wait(timeout=5)
        self._server.server_proc = None
        self._server.stop()  # closes its log files
        self._server = None
        (self.folder / "milvus.pid").unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL, as a crash would: for the durability tests."""
        if self._server is not None and self._server.server_proc is not None:
            self._server.server_proc.kill()
            self._server.server_proc.wait(timeout=10)
        self.stop()

    def _own_password(self) -> str:
        """The root password of this folder, set in Milvus in place of the default if not yet.
        The file is written before Milvus is changed, so a crash between the two leaves the
        default in place and the next start finishes the change."""
        path = self.folder / PASSWORD_FILE
        stored = path.read_text(encoding="ascii").strip() if path.exists() else None
        if stored and self._accepts(stored):
            return stored
        password = stored or create_secret_file(path, secrets.token_urlsafe(24))
        if not self._accepts(MILVUS_DEFAULT_PASSWORD):
            raise RuntimeError(
                f"the embedded Milvus of {self.folder} accepts neither the password in {path} nor"
                " Milvus's default: was its root password changed by hand? Put it in that file."
            )
        client = MilvusClient(uri=self.uri, token=f"{ROOT_USER}:{MILVUS_DEFAULT_PASSWORD}", timeout=30)
        try:
            client.update_password(ROOT_USER, MILVUS_DEFAULT_PASSWORD, password, timeout=30)
        finally:
            client.close()
        return password

    def _accepts(self, password: str) -> bool:
        return accepts(self.uri, f"{ROOT_USER}:{password}")

    def _etcd_ports(self) -> dict[str, int]:
        path = self.folder / "ports.json"
        if path.exists():
            ports: dict[str, int] = json.loads(path.read_text())
            taken = [port for port in ports.values() if not _port_free(port)]
            if taken:
                raise RuntimeError(
                    f"the embedded Milvus of {self.folder} keeps its etcd on ports {sorted(ports.values())}, "
                    f"and {taken} is taken by another program"
                )
            return ports
        ports = {"client": _free_port(), "peer": _free_port()}
        path.write_text(json.dumps(ports))
        return ports

    def _stop_orphan(self) -> None:
        """An engine of this folder left running by a parent that was killed holds its locks."""
        path = self.folder / "milvus.pid"
        if not path.exists():
            return
        try:
            pid = int(path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (ValueError, OSError):
            path.unlink(missing_ok=True)
            return
        if not cmdline or not cmdline[0].endswith(b"milvus"):
            path.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_S
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        path.unlink(missing_ok=True)
