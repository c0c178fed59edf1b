"""One HTTP server on 127.0.0.1 for tests that need a peer (downloads, webhooks).

    with local_http_server(MyHandler, posts=[]) as httpd:
        url = f"http://127.0.0.1:{httpd.server_port}/hook"

The serving loop is bounded in requests and in time and stops by itself, so a test that
goes wrong can never leave a server running.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time


class _CountingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    requests_handled = 0

    def process_request(self, request, client_address):
        self.requests_handled += 1
        super().process_request(request, client_address)


@contextlib.contextmanager
def local_http_server(handler, *, max_requests: int = 50, deadline_s: float = 120.0, **attributes):
    """Serve ``handler`` on an ephemeral 127.0.0.1 port; ``attributes`` are set on the server."""
    httpd = _CountingServer(("127.0.0.1", 0), handler)
    httpd.timeout = 0.1
    for name, value in attributes.items():
        setattr(httpd, name, value)
    stop = threading.Event()
    deadline = time.monotonic() + deadline_s

    def serve():
        while not stop.is_set() and httpd.requests_handled < max_requests and time.monotonic() < deadline:
            httpd.handle_request()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        stop.set()
        thread.join(timeout=5)
        httpd.server_close()
