"""A small HTTP image server on 127.0.0.1 for the remote-image tests and benchmarks/remote_images.py.

Serves the files under --root from memory (re-read when a file changes), with an ETag and, with
--max-age, Cache-Control. It can add latency to every request, and inject faults:

- `--transient-rate R`: that share of the paths (chosen by the path's hash, so a run knows which)
  fail their first `--transient-failures` requests, alternately with 503 + `Retry-After: 1` and a
  connection reset, then succeed;
- `--permanent-rate R`: that share of the other paths answer 404;
- by path prefix: `/_stall/P` sends half the body and stops; `/_html/P` serves P as text/html;
  `/_huge/P` declares a Content-Length of 1 GiB; `/_redirect/N/P` redirects N times then serves P;
  `/_status/CODE/P` answers CODE; `/_drip/P` sends one byte every 0.5 s.

`GET /_stats` answers the request counts as JSON (`POST /_reset` zeroes them). Stdlib asyncio only:
the server shares the machine's cores with what it serves, so it stays light. Prints `port N` when
listening.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import mimetypes
import signal
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit


def chosen(path: str, rate: float, salt: str) -> bool:
    """Whether `path` falls in a fault's share (deterministic: the test knows which paths)."""
    h = int.from_bytes(hashlib.sha256((salt + path).encode()).digest()[:8], "big")
    return h / 2**64 < rate


class ImageServer:
    def __init__(self, root: Path, a: argparse.Namespace):
        self.root, self.a = root.resolve(), a
        self.files: dict[str, tuple[int, bytes, str]] = {}
        self.stats: Counter = Counter()
        self.tries: Counter = Counter()

    def file(self, rel: str) -> tuple[bytes, str] | None:
        p = (self.root / rel).resolve()
        if self.root not in p.parents or not p.is_file():
            return None
        st = p.stat()
        got = self.files.get(rel)
        if got is None or got[0] != st.st_mtime_ns:
            data = p.read_bytes()
            got = self.files[rel] = (st.st_mtime_ns, data, '"' + hashlib.sha1(data).hexdigest() + '"')
        return got[1], got[2]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                if not await self.respond(method, unquote(urlsplit(target).path), headers, writer):
                    return
        except (ConnectionError, ValueError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def respond(self, method: str, path: str, headers: dict, w: asyncio.StreamWriter) -> bool:
        if path == "/_stats":
            return await self.send(w, 200, json.dumps(dict(self.stats)).encode(), "application/json")
        if path == "/_reset" and method == "POST":
            self.stats.clear()
            self.tries.clear()
            return await self.send(w, 200, b"{}", "application/json")
        self.stats["requests"] += 1
        if "if-none-match" in headers:
            self.stats["conditional"] += 1
        if self.a.latency_ms:
            await asyncio.sleep(self.a.latency_ms / 1000)
        return await self.serve(path, headers, w)

    async def serve(self, path: str, headers: dict, w: asyncio.StreamWriter) -> bool:
        parts = path.lstrip("/").split("/")
        mode = parts[0] if parts[0].startswith("_") else ""
        if mode in ("_redirect", "_status"):
            n, rest = int(parts[1]), "/".join(parts[2:])
            if mode == "_status":
                return await self.send(w, n, b"no", "text/plain")
            target = f"/_redirect/{n - 1}/{rest}" if n > 1 else f"/{rest}"
            return await self.send(w, 302, b"", "text/plain", {"Location": target})
        rel = "/".join(parts[1:]) if mode else "/".join(parts)
        if mode == "" and chosen(rel, self.a.transient_rate, "t"):
            self.tries[rel] += 1
            if self.tries[rel] <= self.a.transient_failures:
                self.stats["transient"] += 1
                if self.tries[rel] % 2:
                    return await self.send(w, 503, b"busy", "text/plain", {"Retry-After": "1"})
                w.transport.abort()  # a reset mid-request
                return False
        elif mode == "" and chosen(rel, self.a.permanent_rate, "p"):
            self.stats["permanent"] += 1
            return await self.send(w, 404, b"gone", "text/plain")
        got = self.file(rel)
        if got is None:
            return await self.send(w, 404, b"not found", "text/plain")
        data, etag = got
        kind = "text/html" if mode == "_html" else (mimetypes.guess_type(rel)[0] or "application/octet-stream")
        extra = {"ETag": etag, **({"Cache-Control": f"max-age={self.a.max_age}"} if self.a.max_age else {})}
        if headers.get("if-none-match") == etag:
            self.stats["not_modified"] += 1
            return await self.send(w, 304, b"", kind, extra, body=False)
        self.stats["ok"] += 1
        self.stats["bytes"] += len(data)
        return await self.special(mode, w, data, kind, extra)

    async def special(self, mode: str, w: asyncio.StreamWriter, data: bytes, kind: str, extra: dict) -> bool:
        if mode == "_huge":
            return await self.send(w, 200, b"", kind, {**extra, "Content-Length": str(1 << 30)}, body=False)
        if mode in ("_stall", "_drip"):
            w.write(self.head(200, kind, len(data), extra))
            if mode == "_stall":
                w.write(data[: len(data) // 2])
                await w.drain()
                await asyncio.sleep(3600)
            for i in range(len(data)):
                w.write(data[i : i + 1])
                await w.drain()
                await asyncio.sleep(0.5)
            return False
        return await self.send(w, 200, data, kind, extra)

    @staticmethod
    def head(status: int, kind: str, length: int, extra: dict) -> bytes:
        lines = [f"HTTP/1.1 {status} X", f"Content-Type: {kind}", *[f"{k}: {v}" for k, v in extra.items()]]
        if "Content-Length" not in extra:
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send(self, w: asyncio.StreamWriter, status: int, data: bytes, kind: str, extra: dict | None = None,
                   body: bool = True) -> bool:
        w.write(self.head(status, kind, len(data) if body else 0, extra or {}) + (data if body else b""))
        await w.drain()
        return True


async def run(a: argparse.Namespace) -> None:
    server = ImageServer(Path(a.root), a)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", a.port, backlog=1024)
    print(f"port {srv.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with srv:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--max-age", type=int, default=0, help="Cache-Control max-age (0: none; clients revalidate)")
    p.add_argument("--transient-rate", type=float, default=0.0)
    p.add_argument("--transient-failures", type=int, default=2)
    p.add_argument("--permanent-rate", type=float, default=0.0)
    a = p.parse_args(argv)
    asyncio.run(run(a))


if __name__ == "__main__":
    main()
