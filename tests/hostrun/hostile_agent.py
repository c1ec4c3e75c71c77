"""A guest agent that lies: speaks guest/wire.py on fd argv[1] and answers each GET
with what the test chose, as the host's client must survive it.

A GET of a path that names a file on this host sends that file's bytes (a crafted tar
stream, say) as DATA within the window, then END. Paths (and an EXEC's program)
starting with ``!`` misbehave:
  !oversized-frame  a frame header announcing 1 GiB, then silence
  !over-window      STDOUT past the credit the host granted (an EXEC)
  !unknown-stream   DATA on a stream nobody opened
  !garbage          bytes that are no frame at all
  !endless          DATA for ever, within the window; a KILL ends it with an ERROR
  !wrong-kind       STDOUT on a get's stream
"""

from __future__ import annotations

import os
import socket
import sys
import time

from guest import wire


class Hostile:
    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.frames = wire.FrameReader(wire.HARD_MAX_FRAME)
        self.credit: dict[int, int] = {}
        self.window = 0
        self.killed: set[int] = set()

    def next(self) -> tuple[int, int, bytes]:
        while (got := self.frames.next()) is None:
            data = self.sock.recv(1 << 16)
            if not data:
                sys.exit(0)
            self.frames.feed(data)
        return got

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def serve(self) -> None:
        peer = wire.accept_hello(*self.next())
        self.window = peer.window
        self.send(wire.hello(software="hostile test agent"))
        while True:
            self.handle(*self.next())

    def handle(self, kind: int, stream: int, payload: bytes) -> None:
        if kind == wire.WINDOW:
            self.credit[stream] = self.credit.get(stream, 0) + wire.decode(
                kind, payload)["increment"]
        elif kind == wire.KILL:
            self.killed.add(stream)
        elif kind == wire.SHUTDOWN:
            self.send(wire.message(wire.SHUTDOWN, stream))
            sys.exit(0)
        elif kind == wire.GET:
            self.credit[stream] = self.window
            self.answer(stream, wire.decode(kind, payload)["path"])
        elif kind == wire.EXEC:
            self.credit[stream] = self.window
            self.answer(stream, wire.decode(kind, payload)["argv"][0])

    def wait_credit(self, stream: int) -> None:
        while self.credit[stream] <= 0 and stream not in self.killed:
            self.handle(*self.next())

    def send_data(self, stream: int, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            self.wait_credit(stream)
            if stream in self.killed:
                return False
            size = min(self.credit[stream], wire.CHUNK, len(view))
            self.send(wire.frame(wire.DATA, stream, bytes(view[:size])))
            self.credit[stream] -= size
            view = view[size:]
        return True

    def answer(self, stream: int, path: bytes) -> None:
        if path == b"!oversized-frame":
            self.send((1 << 30).to_bytes(4, "big") + bytes([wire.DATA])
                      + stream.to_bytes(4, "big"))
            time.sleep(3600)
        elif path == b"!over-window":
            for _ in range(self.window // wire.CHUNK + 2):
                self.send(wire.frame(wire.STDOUT, stream, bytes(wire.CHUNK)))
            time.sleep(3600)
        elif path == b"!unknown-stream":
            self.send(wire.frame(wire.DATA, stream + 1000, b"who asked?"))
            time.sleep(3600)
        elif path == b"!garbage":
            self.send(b"\x00\x00\x00\x07" + os.urandom(64))
            time.sleep(3600)
        elif path == b"!wrong-kind":
            self.send(wire.frame(wire.STDOUT, stream, b"not data"))
            time.sleep(3600)
        elif path == b"!endless":
            while self.send_data(stream, b"z" * wire.CHUNK):
                pass
            self.send(wire.message(wire.ERROR, stream, message="cancelled"))
        else:
            with open(path, "rb") as f:
                data = f.read()
            if self.send_data(stream, data):
                self.send(wire.message(wire.END, stream, size=len(data)))
            else:
                self.send(wire.message(wire.ERROR, stream, message="cancelled"))


if __name__ == "__main__":
    Hostile(int(sys.argv[1])).serve()
