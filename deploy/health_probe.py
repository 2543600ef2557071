"""Exit 0 when this container's Echo worker answers 200 on a health path, else 1.

The container's healthcheck: ``python deploy/health_probe.py /health/ready``.
It asks as the balancer does (the site's host name, ``X-Forwarded-Proto:
https``), so neither ``ALLOWED_HOSTS`` nor the HTTPS redirect turns it away,
and it never follows a redirect: one means a misconfiguration, not health.
Standard library only.
"""

from __future__ import annotations

import http.client
import os
import sys


def main(argv: list[str]) -> int:
    """Probe the path in ARGV (``/health/ready`` by default) and return the exit status."""
    path = argv[1] if len(argv) > 1 else "/health/ready"
    port = int(os.environ.get("ECHO_PROBE_PORT", "8000"))
    hosts = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "").split(",") if h.strip()]
    # ".example.com" allows example.com and its subdomains.
    host = hosts[0].lstrip(".") if hosts else "localhost"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        connection.request("GET", path, headers={"Host": host, "X-Forwarded-Proto": "https"})
        response = connection.getresponse()
        body = response.read(2000).decode("utf-8", "replace")
    except OSError as exc:
        print(f"{path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    if response.status != 200:
        print(f"{path}: {response.status} {body}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
