"""A network path that a test cuts and heals: what a worker reaches a server through."""

from __future__ import annotations

import contextlib
import socket
import threading


class Link:
    """A TCP path 127.0.0.1:`port` -> 127.0.0.1:`target`, cut and healed as a network partition is:
    while cut nothing passes either way (connections hang with their bytes waiting, a new connection
    gets no answer), and once healed every connection carries on where it was, as TCP's
    retransmissions resume it after a partition shorter than their timeout."""

    def __init__(self, target: int):
        self.target = target
        self.flowing = threading.Event()
        self.flowing.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self.flowing.clear()

    def heal(self) -> None:
        self.flowing.set()

    def through(self, url: str) -> str:
        """`url` (of the server at `target`) as reached through this link."""
        return url.replace(f"127.0.0.1:{self.target}", f"127.0.0.1:{self.port}")

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            self.flowing.wait()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for end in (src, dst):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
