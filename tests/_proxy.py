"""A TCP proxy in front of Redis that can lose replies and stall, for fault tests.

``cut_replies(n)``: the next ``n`` replies from the server are swallowed and the client's
connection is closed right after the server applied the request — the "lost reply" case
that makes a naive retry write twice. ``stall()``/``resume()``: hold all traffic, as a
slow or hung server would. ``refuse_upgrades=True``: in front of an HTTP server, a request
asking for ``Upgrade: websocket`` is answered 403 and its connection closed, as by proxies
that do not pass WebSocket upgrades on; everything else passes.
"""

from __future__ import annotations

import contextlib
import socket
import threading

_REFUSED = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 22\r\n"
    b"Connection: close\r\n\r\nno WebSocket upgrades\n"
)


class FaultProxy:
    def __init__(
        self, target_port: int, target_host: str = "127.0.0.1", *, refuse_upgrades: bool = False
    ) -> None:
        self.target = (target_host, target_port)
        self.refuse_upgrades = refuse_upgrades
        self.refused_upgrades = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._to_cut = 0
        self.cut_count = 0
        # Connections accepted so far: a client that reconnects shows here.
        self.accepted = 0
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept_thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut_replies(self, n: int = 1) -> None:
        with self._lock:
            self._to_cut += n

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def drop_connections(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                # shutdown first: close() alone leaves the socket open while a pump thread
                # is blocked in recv() on it, so the peer would never see the drop.
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.drop_connections()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, is_reply: bool) -> None:
        seen = b""  # the request bytes so far, lowercased (a header may span two reads)
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                if self.refuse_upgrades and not is_reply:
                    seen = seen[-64:] + chunk.lower()
                    if b"\r\nupgrade: websocket" in seen:
                        with self._lock:
                            self.refused_upgrades += 1
                        src.sendall(_REFUSED)
                        break
                self._flowing.wait()
                if is_reply:
                    with self._lock:
                        cut = self._to_cut > 0
                        if cut:
                            self._to_cut -= 1
                            self.cut_count += 1
                    if cut:
                        break  # the server applied the request; its reply is lost
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
