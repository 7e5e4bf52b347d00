"""A tiny counting TCP proxy on loopback (benchmarks only): counts the requests clients send.

    countproxy.py MODE PORTFILE UPSTREAM_HOST:PORT

MODE http: Consul's HTTP API. A request is a request line (`GET|PUT|POST|DELETE|HEAD /… HTTP/1.x`
           at the start of the stream or after CRLF) in the client→server direction. Bodies are
           short JSON here, so a body line that looks like a request line does not occur.
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

REQ = re.compile(rb"(?:^|\r\n)(?:GET|PUT|POST|DELETE|HEAD) /[^ \r\n]* HTTP/1\.[01]\r\n")
COUNT = 0


class HttpCounter:
    def __init__(self):
        self.tail = b""

    def feed(self, data):
        buf = self.tail + data
        n = len(REQ.findall(buf)) - (len(REQ.findall(self.tail)) if self.tail else 0)
        self.tail = buf[-64:]
        return max(n, 0)


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
