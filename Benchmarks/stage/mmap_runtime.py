#!/usr/bin/env python3
"""A stand-in runtime whose start is all weight loading, for cold starts of objects larger than
any GGUF the machine has: it maps the file it is given (as llama.cpp does), touches every page
(so each one is really read: from the page cache, from tmpfs, or from the disk), and only then
answers GET /health with 200. POST /v1/chat/completions streams one fixed chunk of content and
[DONE], so `strata bench cold-start` can time its first token too.

Usage (a `command` runtime in a Strata config):
  command: ["python3", "Benchmarks/stage/mmap_runtime.py", "--port", "${PORT}", "--model", "${MODEL_PATH}"]
"""
import argparse
import json
import mmap
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = mmap.PAGESIZE


def load(path: str) -> int:
    """Touches one byte per page of the mapped file; returns their sum (so nothing is skipped)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return 0
        with mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as m:
            m.madvise(mmap.MADV_SEQUENTIAL)
            view = memoryview(m)
            total = sum(view[::PAGE])   # one byte of every page, in order
            view.release()
            return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", required=True)
    args = ap.parse_args()
    checksum = load(args.model)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            body = json.dumps({"status": "ok", "touched": checksum}).encode()
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            chunk = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Paris"}}]}
            body = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
