"""Fault injection helpers: a flaky HTTP reverse proxy in front of a real server (MLflow,
moto S3), and SIGKILL of a child process at a chosen point.

:class:`FlakyProxy` forwards every request to ``upstream`` unchanged, except those a
:class:`Rule` catches: answer an error status (``status``), close the connection without
an answer (``drop``), or send the headers and half the body and hang up (``truncate``).
It binds 127.0.0.1 on a free port; use :func:`flaky_proxy` as a context manager.
"""

from __future__ import annotations

import http.client
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "content-length"}

S3_ERROR = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            "<Message>injected fault</Message><RequestId>fault</RequestId></Error>")


@dataclass
class Rule:
    """Catch matching requests: skip the first ``skip``, then catch ``times`` (None: all)."""

    kind: str  # "status" | "drop" | "truncate"
    times: int | None = 1
    skip: int = 0
    status: int = 503
    body: bytes = b""
    content_type: str = "application/json"
    match: Callable[[str, str], bool] = field(default=lambda method, path: True)
    caught: int = 0
    seen: int = 0

    def take(self, method: str, path: str) -> bool:
        if not self.match(method, path):
            return False
        self.seen += 1
        if self.seen <= self.skip:
            return False
        if self.times is not None and self.caught >= self.times:
            return False
        self.caught += 1
        return True


class FlakyProxy:
    def __init__(self, upstream: str) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = int(parts.port or 80)
        self.rules: list[Rule] = []
        self.requests: list[tuple[str, str]] = []
        self.faults: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self.url = ""

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def down(self, status: int = 503, *, skip: int = 0, body: bytes = b"",
             content_type: str = "application/json") -> Rule:
        """Every request after the first ``skip`` gets ``status`` until :meth:`clear`."""
        return self.add(Rule("status", times=None, skip=skip, status=status, body=body, content_type=content_type))

    def _decide(self, method: str, path: str) -> Rule | None:
        with self._lock:
            self.requests.append((method, path))
            for rule in self.rules:
                if rule.take(method, path):
                    self.faults.append((rule.kind, method, path))
                    return rule
        return None


def _handler(proxy: FlakyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _hang_up(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _handle(self) -> None:
            body = self._body()
            rule = proxy._decide(self.command, self.path)
            if rule is not None and rule.kind == "drop":
                self._hang_up()
                return
            if rule is not None and rule.kind == "status":
                self.send_response(rule.status)
                self.send_header("Content-Type", rule.content_type)
                self.send_header("Content-Length", str(len(rule.body)))
                self.end_headers()
                self.wfile.write(rule.body)
                return
            conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn.request(self.command, self.path, body=body if body or self.command in ("POST", "PUT", "PATCH")
                             else None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
                status, reason = resp.status, resp.reason
            finally:
                conn.close()
            self.send_response(status, reason)
            for k, v in out_headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if rule is not None and rule.kind == "truncate" and self.command != "HEAD" and len(data) > 1:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self._hang_up()
                return
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

    return Handler


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """boto3 keeps connections to the proxy alive; when a test's client goes away
        (or the test process exits) the reset is expected, not an error to print."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@contextmanager
def flaky_proxy(upstream: str) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(upstream)
    httpd = _ProxyServer(("127.0.0.1", 0), _handler(proxy))
    httpd.daemon_threads = True
    proxy.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- killing a process

# Run in a child process before the target code. BPM_FI_MODE:
#   after    SIGKILL right after the batch holding the BPM_FI_AT-th KeyedJsonl record is written (fsync'd)
#   torn     write the batch up to half of the BPM_FI_AT-th record, no newline, fsync, SIGKILL (a torn line)
#   publish  SIGKILL just before (BPM_FI_AT=0) or after (1) a data file is copied into BPM_FI_DIR
#            (a step publishing its output)
KILL_HOOK = r'''
import os, signal, shutil
from pathlib import Path
import bpm_lib.io.jsonl as _jsonl

_mode, _at = os.environ.get("BPM_FI_MODE", ""), int(os.environ.get("BPM_FI_AT", "0"))
_count = [0]

def _die():
    os.kill(os.getpid(), signal.SIGKILL)

if _mode in ("after", "torn"):
    # Every record goes through append_many (append is a batch of one); records are
    # counted one by one, whatever the batch they are written in.
    _many = _jsonl.KeyedJsonl.append_many

    def append_many(self, records):
        records = list(records)
        start = _count[0]
        _count[0] += len(records)
        hit = start < _at <= _count[0]
        if hit and _mode == "torn":
            # the batch's write stops half-way through the BPM_FI_AT-th record
            k = _at - start - 1
            line = _jsonl.dumps(records[k]) + "\n"
            self._fh.write("".join(_jsonl.dumps(r) + "\n" for r in records[:k]) + line[: len(line) // 2])
            self._fh.flush()
            os.fsync(self._fh.fileno())
            _die()
        written = _many(self, records)
        if hit:
            _die()
        return written

    _jsonl.KeyedJsonl.append_many = append_many
elif _mode == "publish":
    _copy2, _dir = shutil.copy2, Path(os.environ["BPM_FI_DIR"]).resolve()

    def copy2(src, dst, *a, **kw):
        data = Path(dst).resolve().parent == _dir and Path(src).name != "_bpm.json"
        if data and _at == 0:
            _die()
        out = _copy2(src, dst, *a, **kw)
        if data:
            _die()
        return out

    shutil.copy2 = copy2
'''


def jsonl_lines(folder: Path) -> int:
    """Complete lines in every ``*.jsonl`` below ``folder`` (what a killer watches)."""
    total = 0
    for path in folder.rglob("*.jsonl"):
        try:
            total += path.read_bytes().count(b"\n")
        except OSError:
            continue
    return total


def run_and_kill(code: str, *, mode: str, at: int = 0, watch: Path | None = None, publish_dir: Path | None = None,
                 timeout: float = 240.0) -> int:
    """Run ``code`` in a fresh interpreter (repo root on the path) and kill it with SIGKILL:
    from inside (``after``/``torn``/``publish``: :data:`KILL_HOOK`) or from outside
    (``external``: once ``watch`` holds ``at`` JSONL lines). Returns the exit code (-9
    when killed; anything else means it finished first)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ, BPM_FI_MODE=mode if mode != "external" else "", BPM_FI_AT=str(at))
    if publish_dir is not None:
        env["BPM_FI_DIR"] = str(publish_dir)
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen([sys.executable, "-c", KILL_HOOK + "\n" + code], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"child did not finish or die within {timeout}s")
            if mode == "external" and watch is not None and jsonl_lines(watch) >= at:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            err = proc.stderr.read().decode(errors="replace")
            proc.stderr.close()
            if proc.returncode not in (-9, 0) and err:
                raise RuntimeError(f"child failed with {proc.returncode}:\n{err[-3000:]}")
    return int(proc.returncode)
