"""A tiny counting TCP proxy on loopback (benchmarks only): counts the requests clients send.

    countproxy.py MODE PORTFILE UPSTREAM_HOST:PORT

MODE http: Consul's HTTP API. Every HTTP/1.1 request the clients send (the stream is parsed:
           headers, then a Content-Length or chunked body; keep-alive counted per request).
MODE zk:   ZooKeeper's protocol. Every client→server frame (4-byte big-endian length + payload)
           is one request: connect, create, getChildren, exists, delete, ping, close…

Listens on 127.0.0.1 on two free ports and writes "PORT CTRLPORT" to PORTFILE once listening.
A connection to CTRLPORT gets the count so far as one line and is closed. Runs until killed.
"""

import asyncio
import os
import re
import struct
import sys

REQ = re.compile(rb"(?:GET|PUT|POST|DELETE|HEAD) /[^ \r\n]* HTTP/1\.[01]\r\n")
COUNT = 0


class HttpCounter:
    """Parses the client's byte stream as HTTP/1.1 requests (headers, then a Content-Length or
    chunked body), so keep-alive and pipelined requests are each counted once."""

    def __init__(self):
        self.buf = b""
        self.body_left = 0  # bytes of a Content-Length body still to skip
        self.chunked = False

    def feed(self, data):
        self.buf += data
        n = 0
        while True:
            if self.body_left:
                k = min(self.body_left, len(self.buf))
                self.buf = self.buf[k:]
                self.body_left -= k
                if self.body_left:
                    return n
            if self.chunked:
                i = self.buf.find(b"\r\n")
                if i < 0:
                    return n
                try:
                    size = int(self.buf[:i].split(b";")[0], 16)
                except ValueError:
                    size = 0
                if size == 0:
                    j = self.buf.find(b"\r\n\r\n", i - 2 if i >= 2 else 0)
                    if j < 0:
                        return n
                    self.buf = self.buf[j + 4 :]
                    self.chunked = False
                    continue
                if len(self.buf) < i + 2 + size + 2:
                    return n
                self.buf = self.buf[i + 2 + size + 2 :]
                continue
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return n
            head, self.buf = self.buf[:i], self.buf[i + 4 :]
            if REQ.match(head + b"\r\n"):
                n += 1
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                k = k.strip().lower()
                if k == b"content-length":
                    try:
                        self.body_left = int(v.strip())
                    except ValueError:
                        pass
                elif k == b"transfer-encoding" and b"chunked" in v.lower():
                    self.chunked = True


class ZkCounter:
    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf += data
        n = 0
        while len(self.buf) >= 4:
            (ln,) = struct.unpack(">i", self.buf[:4])
            if ln < 0 or len(self.buf) < 4 + ln:
                break
            self.buf = self.buf[4 + ln :]
            n += 1
        return n


async def pipe(reader, writer, counter):
    global COUNT
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if counter is not None:
                COUNT += counter.feed(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(creader, cwriter, mode, up_host, up_port):
    try:
        ureader, uwriter = await asyncio.open_connection(up_host, up_port)
    except OSError:
        cwriter.close()
        return
    counter = HttpCounter() if mode == "http" else ZkCounter()
    await asyncio.gather(pipe(creader, uwriter, counter), pipe(ureader, cwriter, None))


async def control(_reader, writer):
    writer.write(f"{COUNT}\n".encode())
    await writer.drain()
    writer.close()


async def main():
    mode, portfile, upstream = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode not in ("http", "zk"):
        sys.exit("countproxy.py: MODE is http or zk")
    host, _, port = upstream.rpartition(":")
    server = await asyncio.start_server(lambda r, w: handle(r, w, mode, host, int(port)), "127.0.0.1", 0)
    ctrl = await asyncio.start_server(control, "127.0.0.1", 0)
    p = server.sockets[0].getsockname()[1]
    c = ctrl.sockets[0].getsockname()[1]
    with open(portfile + ".tmp", "w") as f:
        f.write(f"{p} {c}\n")
    os.rename(portfile + ".tmp", portfile)
    async with server, ctrl:
        await asyncio.gather(server.serve_forever(), ctrl.serve_forever())


if __name__ == "__main__":
    asyncio.run(main())
