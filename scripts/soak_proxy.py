"""A TCP proxy that can add latency: the soak's "slow database" fault.

The workers connect to PostgreSQL through it; while ``delay_s`` is above zero every chunk
is held that long before it is forwarded, in both directions. A proxy and not a hook in
the library, so the library runs exactly as it does in production.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class LatencyProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self.delay_s = 0.0
        self.refusing = False  # a server unreachable: new connections are reset at once
        self._stopped = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="soak-proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the server is down (a restart): the client sees a reset
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                delay = self.delay_s
                if delay > 0:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._sockets.difference_update((src, dst))

    def cut(self, client_port: int) -> int:
        """Cut the connection whose server process sees it coming from ``client_port``
        (``pg_stat_activity.client_port``): the client's statement goes on on the server,
        its reply is lost. The number of connections cut."""
        with self._lock:
            hit = [s for s in self._sockets if _local_port(s) == client_port]
        for s in hit:  # its pump then shuts the client's side too
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        return len(hit)

    def cut_all(self) -> None:
        """Cut every connection (with ``refusing``: an outage)."""
        with self._lock:
            hit = list(self._sockets)
        for s in hit:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stopped.set()
        self._server.close()
        with self._lock:
            for s in list(self._sockets):
                with contextlib.suppress(OSError):
                    s.close()


def _local_port(s: socket.socket) -> int | None:
    try:
        return int(s.getsockname()[1])
    except OSError:  # closed meanwhile
        return None
