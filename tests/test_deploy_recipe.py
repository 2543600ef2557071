"""The multi-worker recipe in deploy/ holds together and its configurations are valid.

The compose file's structure, its environment against the production settings
(loaded for real in a subprocess), the image's command against ``make run``,
nginx's configuration under ``nginx -t``, the systemd units under
``systemd-analyze verify`` and the compose file under ``docker compose config``
where those tools exist (nginx is installed by ``.ci/run``; Docker Compose and
systemd are not CI requirements, so their checks skip with the reason).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import httpx
import psycopg
import pytest
import yaml
from django.conf import settings
from django.urls import resolve
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect as ws_connect

from tests.server_processes import django_shell, free_port, manage
from tests.services import reachable, require_redis, scratch_postgres_database

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
WORKERS = sorted(name for name in SERVICES if re.fullmatch(r"echo-\d+", name))
NGINX_CONF = (DEPLOY / "nginx.conf").read_text()
IN_CI = os.environ.get("CI") == "true"


def deploy_module(name: str) -> ModuleType:
    """Import deploy/NAME.py (deploy/ is no package: its scripts run alone)."""
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


new_env = deploy_module("new_env")
self_signed_cert = deploy_module("self_signed_cert")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Return VALUE with Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} filled from ENV."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        current = env.get(name, "")
        if op == ":?" and not current:
            raise AssertionError(f"{name} is required: {arg}")
        if op == ":-" and not current:
            return arg
        return current

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def dotenv(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {name: value for name, value in pairs if not name.startswith("#")}


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    """The variables of deploy/.env as new_env.py writes it."""
    example = (DEPLOY / ".env.example").read_text()
    return dotenv(new_env.render(example, new_env.fresh_secrets()))


def worker_environment(env: dict[str, str]) -> dict[str, str]:
    return {k: interpolate(str(v), env) for k, v in SERVICES[WORKERS[0]]["environment"].items()}


def uvicorn_flags(words: list[str]) -> dict[str, str | None]:
    """Return uvicorn's options in WORDS as {flag: value or None}, from the app path on."""
    words = words[words.index("echo_site.asgi:application") + 1 :]
    flags: dict[str, str | None] = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            following = words[i + 1] if i + 1 < len(words) else None
            flags[word] = None if following is None or following.startswith("--") else following
    return flags


def makefile_flags() -> dict[str, str | None]:
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Makefile").read_text())
    line = next(ln for ln in text.splitlines() if "uvicorn echo_site.asgi:application" in ln)
    return uvicorn_flags(shlex.split(line.replace("$(BIN)/", "")))


def test_the_stack_has_its_services():
    assert {"postgres", "redis", "migrate", "nginx", "tls-cert"} <= set(SERVICES)
    assert len(WORKERS) >= 2, "a multi-worker recipe needs several workers"
    assert all(SERVICES[w]["stop_grace_period"] for w in WORKERS)


def test_the_migration_runs_before_any_worker():
    migrate = SERVICES["migrate"]
    assert "manage.py migrate --noinput" in " ".join(migrate["command"])
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for worker in WORKERS:
        depends = SERVICES[worker]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", worker
        assert depends["postgres"]["condition"] == "service_healthy", worker
        assert depends["redis"]["condition"] == "service_healthy", worker


def test_workers_are_healthy_when_ready_and_nginx_waits_for_them():
    for worker in WORKERS:
        probe = SERVICES[worker]["healthcheck"]["test"]
        assert probe[:3] == ["CMD", "python", "deploy/health_probe.py"], worker
        assert probe[3] == "/health/ready"
    assert resolve("/health/ready").url_name == "health-ready"
    nginx_depends = SERVICES["nginx"]["depends_on"]
    for worker in WORKERS:
        assert nginx_depends[worker]["condition"] == "service_healthy"
    assert nginx_depends["tls-cert"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "redis"):
        assert SERVICES[name]["healthcheck"]["test"], name


def test_nginx_sends_to_every_worker_and_nothing_else():
    upstream = re.search(r"upstream echo_workers \{(.*?)\}", NGINX_CONF, re.S).group(1)
    servers = re.findall(r"^\s*server (\S+):8000\b", upstream, re.M)
    assert servers == WORKERS


def test_only_the_balancer_is_trusted_with_forwarded_headers(stack_env):
    env = worker_environment(stack_env)
    balancer = interpolate(SERVICES["nginx"]["networks"]["edge"]["ipv4_address"], stack_env)
    assert env["FORWARDED_ALLOW_IPS"] == balancer
    subnet = interpolate(COMPOSE["networks"]["edge"]["ipam"]["config"][0]["subnet"], stack_env)
    assert ipaddress.ip_address(balancer) in ipaddress.ip_network(subnet)
    # uvicorn already made the client's address REMOTE_ADDR; Echo must not re-read the header.
    assert env["ECHO_TRUSTED_PROXY_COUNT"] == "0"
    assert COMPOSE["networks"]["backend"]["internal"] is True
    for name in ["postgres", "redis", *WORKERS]:
        assert "ports" not in SERVICES[name], f"{name} must be reachable through nginx only"
    # nginx is the edge: it sets the headers, never passes a client's on.
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in NGINX_CONF
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in NGINX_CONF
    assert "$proxy_add_x_forwarded_for" not in NGINX_CONF


def test_every_required_variable_is_in_the_example(stack_env):
    text = (DEPLOY / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert {"SECRET_KEY", "ECHO_ENCRYPTION_KEYS", "POSTGRES_PASSWORD"} <= required
    example = dotenv((DEPLOY / ".env.example").read_text())
    assert required <= set(example), "every required variable is listed in .env.example"
    assert all(stack_env[name] for name in required), "new_env.py fills each one"
    with pytest.raises(AssertionError, match="SECRET_KEY"):
        worker_environment({})


def test_the_production_settings_load_from_the_compose_environment(stack_env, tmp_path):
    env = worker_environment(stack_env)
    for name in (
        "ECHO_ENV",
        "SECRET_KEY",
        "ECHO_ENCRYPTION_KEYS",
        "DATABASE_URL",
        "REDIS_URL",
        "ALLOWED_HOSTS",
        "ECHO_PROXY_SETS_X_FORWARDED_PROTO",
        "ECHO_TRUSTED_PROXY_COUNT",
        "FORWARDED_ALLOW_IPS",
        "ECHO_DRAIN_SECONDS",
    ):
        assert env.get(name), f"the workers' environment misses {name}"
    assert SERVICES["migrate"]["environment"] == SERVICES[WORKERS[0]]["environment"]
    script = (
        "import json, django; django.setup(); from django.conf import settings as s;"
        "print(json.dumps([s.ECHO_ENV, s.DATABASES['default']['ENGINE'],"
        " s.DATABASES['default']['HOST'], s.CHANNEL_LAYERS['default']['BACKEND'],"
        " s.ALLOWED_HOSTS, list(s.SECURE_PROXY_SSL_HEADER), s.SECURE_SSL_REDIRECT]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={
            **env,
            "PATH": os.environ["PATH"],
            "DJANGO_SETTINGS_MODULE": "echo_site.settings",
            "ECHO_VAR_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        "production",
        "django.db.backends.postgresql",
        "postgres",
        "channels_redis.core.RedisChannelLayer",
        ["localhost"],
        ["HTTP_X_FORWARDED_PROTO", "https"],
        True,
    ]


def test_new_env_never_overwrites(tmp_path):
    target = tmp_path / ".env"
    assert new_env.main(target) == 0
    assert target.stat().st_mode & 0o777 == 0o600
    first = target.read_text()
    assert new_env.main(target) == 1
    assert target.read_text() == first
    values = dotenv(first)
    from cryptography.fernet import Fernet

    Fernet(values["ECHO_ENCRYPTION_KEYS"])
    assert re.fullmatch(r"[0-9a-f]+", values["POSTGRES_PASSWORD"])


def test_the_image_serves_as_make_run_does():
    dockerfile = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    cmd = json.loads(next(ln for ln in dockerfile.splitlines() if ln.startswith("CMD "))[4:])
    image, make = uvicorn_flags(cmd), makefile_flags()
    assert cmd[0] == "uvicorn"
    for flag, value in make.items():
        if flag not in ("--host", "--port"):
            assert image.get(flag, "missing") == value, flag
    assert image["--host"] == "0.0.0.0" and image["--port"] == "8000"
    assert "--proxy-headers" in image
    assert set(image) - set(make) == {"--proxy-headers"}, "the image adds only proxy headers"
    assert "STOPSIGNAL SIGTERM" in dockerfile


def test_the_systemd_worker_serves_as_make_run_does_and_drains():
    unit = (DEPLOY / "systemd" / "echo@.service").read_text()
    exec_start = re.sub(r"\\\n\s*", " ", unit).split("ExecStart=", 1)[1].splitlines()[0]
    flags = uvicorn_flags(shlex.split(exec_start))
    for flag, value in makefile_flags().items():
        if flag != "--port":
            assert flags.get(flag, "missing") == (value if flag != "--host" else "127.0.0.1")
    assert flags["--port"] == "%i"
    assert "KillSignal=SIGTERM" in unit
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))
    grace = int(SERVICES[WORKERS[0]]["stop_grace_period"].rstrip("s"))
    drain = int(interpolate(SERVICES[WORKERS[0]]["environment"]["ECHO_DRAIN_SECONDS"], {}))
    assert drain == settings.ECHO_DRAIN_SECONDS, "the recipe drains as long as Echo's default"
    assert stop > drain and grace > drain, "the process manager waits out the drain"


def test_nginx_keeps_streams_and_websockets_open():
    websocket = re.search(r"location /ws/ \{(.*?)\}", NGINX_CONF, re.S).group(1)
    streams = re.search(r"location / \{(.*?)\}", NGINX_CONF, re.S).group(1)
    assert "proxy_set_header Upgrade $http_upgrade;" in NGINX_CONF
    assert "proxy_set_header Connection $connection_upgrade;" in NGINX_CONF
    assert "proxy_http_version 1.1;" in NGINX_CONF
    for block, at_least in ((websocket, 3600), (streams, 300)):
        assert "proxy_buffering off;" in block
        timeout = int(re.search(r"proxy_read_timeout (\d+)s;", block).group(1))
        assert timeout >= at_least
    body = int(re.search(r"client_max_body_size (\d+)m;", NGINX_CONF).group(1))
    assert body * 1024 * 1024 == settings.ECHO_MAX_BODY_BYTES


def render_nginx(tmp_path: Path) -> Path:
    """Write a copy of nginx.conf that nginx -t can check here: local upstreams, a test cert."""
    certs = tmp_path / "certs"
    assert self_signed_cert.write_certificate(certs, "localhost")
    assert not self_signed_cert.write_certificate(certs, "localhost"), "an existing pair is kept"
    text = NGINX_CONF
    for port, worker in enumerate(WORKERS, start=18001):
        text = text.replace(f"server {worker}:8000", f"server 127.0.0.1:{port}")
    text = text.replace("/etc/nginx/certs/", f"{certs}/").replace("/run/echo/", f"{tmp_path}/")
    assert "echo-" not in text and "/etc/nginx" not in text
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    return conf


@pytest.mark.skipif(
    shutil.which("nginx") is None and not IN_CI,
    reason="nginx is not installed (apt-get install nginx-light; .ci/run does)",
)
def test_nginx_accepts_the_configuration(tmp_path):
    conf = render_nginx(tmp_path)
    command = ["nginx", "-t", "-q", "-p", str(tmp_path), "-e", "stderr", "-c", str(conf)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    # And it would refuse a broken one: the check is real.
    conf.write_text(conf.read_text().replace("proxy_buffering off;", "proxy_buffering nope;", 1))
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "proxy_buffering" in result.stderr


def test_the_rolling_restart_script_parses_and_marks_workers(tmp_path):
    script = DEPLOY / "rolling-restart.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=10)
    # Its sed expressions, run on a copy of nginx.conf: down (twice is once), then up.
    text = script.read_text()
    down, up = re.findall(r'expr="(.*?)"', text)
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF)
    worker = WORKERS[1]
    for expr in (down, down):
        subprocess.run(["sed", "-i", expr.replace("$1", worker), str(conf)], check=True)
    marked = conf.read_text()
    assert marked.count(" down ") == 1 and f"server {worker}:8000 down " in marked
    subprocess.run(["sed", "-i", up.replace("$1", worker), str(conf)], check=True)
    assert conf.read_text() == NGINX_CONF


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(
    not _compose_available(),
    reason="the docker compose plugin is not installed (not a CI requirement)",
)
def test_docker_compose_accepts_the_file(stack_env, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in stack_env.items()))
    result = subprocess.run(
        ["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "--env-file", str(env_file)]
        + ["config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_units_verify(tmp_path):
    units = ["echo@.service", "echo-migrate.service", "echo.target"]
    (tmp_path / "echo.env").write_text("")
    for unit in units:
        text = (DEPLOY / "systemd" / unit).read_text()
        # Here, the checkout stands in for /opt/echo (verify checks the programs exist).
        text = text.replace("/opt/echo", str(ROOT)).replace(
            "/etc/echo/echo.env", str(tmp_path / "echo.env")
        )
        (tmp_path / unit).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "echo@8001.service", "echo-migrate.service", "echo.target"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr and "not executable" not in result.stderr, result.stderr


@contextmanager
def running(command: list[str], log: Path, **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """Run COMMAND with its stderr in LOG; stop it afterwards."""
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, **kwargs)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while not reachable("127.0.0.1", port):
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("nginx") is None and not IN_CI,
    reason="nginx is not installed (apt-get install nginx-light; .ci/run does)",
)
def test_through_nginx_the_worker_sees_the_client_not_the_balancer(stack_env, tmp_path):
    """The image's command behind the recipe's nginx, on loopback addresses of their own.

    The client calls from 127.0.0.3 and forges X-Forwarded-For; nginx reaches
    the worker from 127.0.0.2, the one address the worker trusts. The audit
    history records 127.0.0.3, the request counts as HTTPS, and a websocket's
    upgrade and origin check pass through.
    """
    redis_url = require_redis()
    dockerfile = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    cmd = json.loads(next(ln for ln in dockerfile.splitlines() if ln.startswith("CMD "))[4:])
    worker_port, http_port, https_port = free_port(), free_port(), free_port()
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    cmd[cmd.index("--port") + 1] = str(worker_port)
    cmd[0] = str(Path(sys.executable).with_name("uvicorn"))
    prefix = f"echo-deploy-{uuid.uuid4().hex[:8]}"
    with scratch_postgres_database() as database_url:
        env = {
            **worker_environment(stack_env),
            "PATH": os.environ["PATH"],
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "ECHO_CHANNEL_PREFIX": prefix,
            "ECHO_CACHE_PREFIX": prefix,
            "ALLOWED_HOSTS": "127.0.0.1",
            "FORWARDED_ALLOW_IPS": "127.0.0.2",
            "ECHO_HEALTH_INTERVAL_SECONDS": "0",
            "ECHO_VAR_DIR": str(tmp_path),
            "ECHO_DRAIN_SECONDS": "1",
        }
        manage(env, "migrate", "--noinput", "-v0")
        key = django_shell(
            env,
            "from providers.config.services import provider_config_create as c;"
            "c(name='echo', plugin='echo', is_default=True);"
            "from plugins_api.access.key_changes import client_key_issue as k;"
            "print(k(name='deploy', scope='admin')[1])",
        ).split()[-1]
        conf = render_nginx(tmp_path)
        text = conf.read_text()
        text = re.sub(r"server 127\.0\.0\.1:\d+", f"server 127.0.0.1:{worker_port}", text)
        text = text.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
        text = text.replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
        text = text.replace(
            "client_max_body_size", "proxy_bind 127.0.0.2;\n        client_max_body_size"
        )
        text = text.replace("access_log /dev/stdout;", "access_log off;")
        conf.write_text(text)
        nginx = ["nginx", "-p", str(tmp_path), "-e", "stderr", "-c", str(conf), "-g", "daemon off;"]
        worker_log, nginx_log = tmp_path / "worker.log", tmp_path / "nginx.log"
        with (
            running(cmd, worker_log, cwd=ROOT, env=env) as worker,
            running(nginx, nginx_log) as balancer,
        ):
            wait_for(worker_port, worker, worker_log)
            wait_for(https_port, balancer, nginx_log)
            transport = httpx.HTTPTransport(local_address="127.0.0.3", verify=False)
            base = f"https://127.0.0.1:{https_port}"
            with httpx.Client(transport=transport, timeout=10) as client:
                deadline = time.monotonic() + 30
                while client.get(f"{base}/health/ready").status_code != 200:
                    assert time.monotonic() < deadline, "the worker never became ready"
                    time.sleep(0.1)
                # Plain HTTP through nginx: Echo redirects, as nginx said it was http.
                plain = client.get(f"http://127.0.0.1:{http_port}/plugins/health")
                assert plain.status_code == 301
                assert plain.headers["location"].startswith("https://")
                response = client.put(
                    f"{base}/plugins/echo/config",
                    json={"prefix": "via nginx: "},
                    headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": "6.6.6.6"},
                )
                assert response.status_code == 200, response.text
                assert "strict-transport-security" in response.headers
            with psycopg.connect(database_url, autocommit=True) as connection:
                (address,) = connection.execute(
                    "SELECT remote_addr FROM providers_providerconfigchange ORDER BY id DESC"
                ).fetchone()
            assert str(address) == "127.0.0.3"
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            try:
                with ws_connect(
                    f"wss://127.0.0.1:{https_port}/ws/chat/",
                    ssl=context,
                    origin=f"https://127.0.0.1:{https_port}",
                    additional_headers={"Authorization": f"Bearer {key}"},
                    open_timeout=10,
                ) as socket:
                    assert socket.response.status_code == 101
            except (OSError, WebSocketException) as exc:
                pytest.fail(
                    f"{exc!r}\nworker: {worker_log.read_text()}\nnginx: {nginx_log.read_text()}"
                )
