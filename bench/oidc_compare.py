"""OIDC benchmark, side by side with node `oidc-provider` (issue 6, "Performance").

Measures, in one run on this machine, with the same number of worker processes for both and
PostgreSQL behind both:

(a) token-endpoint code exchanges per second, and their p50/p99 latency, at concurrency 16.
    Codes are pre-minted just before each phase through each provider's own service layer into
    its database: ours with `gateway.idp.oidc.tokens.create_grant` (what the authorization
    endpoint calls), theirs with its `AuthorizationCode` model (what its
    authorization endpoint calls; `bench/oidc/provider.js`, POST /bench/mint), both for a
    logged-in browser session, so the exchange does exactly what it does after a real login;
(b) complete authorization-code flows per second, login excluded: every simulated browser
    logged in once beforehand (ours through the real password page, theirs through its
    interaction endpoints), then each flow is authorize -> (SSO, no page) -> code -> token
    exchange, following every redirect the provider sends.

Each phase also reports the server CPU per operation (user + system time of the provider's
process session, read from /proc): on a machine shared with other jobs it moves far less than
the rates do.

Both providers run the whole time; the phases run one provider after the other (alternating
which goes first) and repeat `--rounds` times, so a machine shared with other jobs shows up as
spread between rounds rather than as a bias against one side. Everything is loopback; every
phase is bounded in count and in time; the run's own database (`gwbench_<random>`), Redis
prefix and instance folder are removed at the end.

    .venv/bin/python bench/oidc_compare.py [--workers 2] [--rounds 3] [--seconds 6]
    .venv/bin/python bench/oidc_compare.py --profile token|flow   # cProfile of ours

Needs Node.js 20+ and `npm ci --prefix bench/oidc` (run here when node_modules is missing).
"""

from __future__ import annotations

import abc
import argparse
import base64
import collections
import contextlib
import cProfile
import hashlib
import http.client
import io
import json
import os
import pstats
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "bench" / "oidc"
REDIRECT_URI = "https://rp.bench.example/cb"
CLIENT_ID = "bench"
USERNAME = "bench.user"
PASSWORD = "bench password " + "x" * 8
PG_ADMIN_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_DEFAULT = "redis://127.0.0.1:6379/0"
CONCURRENCY = 16
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_FORM = re.compile(r'<form[^>]*action="([^"]*)"')


# --- a minimal HTTP/1.1 browser: one keep-alive connection and a cookie jar --------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


@dataclass
class Browser:
    port: int
    cookies: dict[str, str] = field(default_factory=dict)
    conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if body is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        for attempt in (1, 2):
            fresh = self.conn is None
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=sent)
                response = self.conn.getresponse()
                data = response.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                # A keep-alive connection the server closed while idle: retry once, fresh.
                self.close()
                if fresh or attempt == 2:
                    raise
        reply = Reply(response.status, response.getheaders(), data)
        for name, value in reply.headers:
            if name.lower() == "set-cookie":
                self._set_cookie(value)
        if response.will_close:
            self.close()
        return reply

    def _set_cookie(self, header: str) -> None:
        first, _, attrs = header.partition(";")
        name, _, value = first.strip().partition("=")
        attrs = attrs.lower()
        if not value or "max-age=0" in attrs or "expires=thu, 01 jan 1970" in attrs:
            self.cookies.pop(name, None)
        else:
            self.cookies[name] = value

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _local(location: str) -> str:
    parts = urlsplit(location)
    return parts.path + ("?" + parts.query if parts.query else "")


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(32)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class BenchError(Exception):
    pass


# --- the two providers ----------------------------------------------------------------------


class Provider(abc.ABC):
    name = ""
    authorize_path = ""
    token_path = ""
    port = 0
    secret = ""
    proc: subprocess.Popen[bytes] | None = None

    @abc.abstractmethod
    def login(self, browser: Browser) -> None: ...

    @abc.abstractmethod
    def mint(self, browser: Browser, count: int) -> list[tuple[str, str]]: ...

    def authorize(self, browser: Browser) -> tuple[Reply, str]:
        verifier, challenge = pkce()
        query = urlencode({
            "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI,
            "scope": "openid", "state": secrets.token_urlsafe(12),
            "nonce": secrets.token_urlsafe(12), "code_challenge": challenge,
            "code_challenge_method": "S256",
        })
        return browser.request("GET", f"{self.authorize_path}?{query}"), verifier

    def follow(self, browser: Browser, reply: Reply, hops: int = 10) -> Reply:
        """Follow this provider's own redirects until it answers the relying party."""
        for _ in range(hops):
            location = reply.header("location")
            if reply.status not in (302, 303) or not location or location.startswith(
                REDIRECT_URI
            ):
                return reply
            reply = browser.request("GET", _local(location))
        return reply

    def code_from(self, reply: Reply) -> str:
        location = reply.header("location") or ""
        if reply.status not in (302, 303) or not location.startswith(REDIRECT_URI):
            raise BenchError(f"{self.name}: no redirect to the client ({reply.status})")
        args = parse_qs(urlsplit(location).query)
        if "code" not in args:
            raise BenchError(f"{self.name}: error response {args.get('error')}")
        return args["code"][0]

    def exchange(self, browser: Browser, code: str, verifier: str) -> None:
        basic = base64.b64encode(f"{CLIENT_ID}:{self.secret}".encode()).decode()
        body = urlencode({
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        })
        reply = browser.request(
            "POST", self.token_path, body, {"Authorization": "Basic " + basic}
        )
        if reply.status != 200 or b'"id_token"' not in reply.body:
            raise BenchError(f"{self.name}: token endpoint {reply.status} {reply.body[:200]!r}")

    def flow(self, browser: Browser) -> None:
        reply, verifier = self.authorize(browser)
        self.exchange(browser, self.code_from(self.follow(browser, reply)), verifier)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


class Ours(Provider):
    name = "ours"
    authorize_path = "/oidc/authorize"
    token_path = "/oidc/token"

    def __init__(self, env: dict[str, str], workers: int) -> None:
        from gateway.app import create_app
        from gateway.db import Base, get_db, import_models
        from gateway.settings import Settings

        self.env = env
        self.port = int(env["GATEWAY_ISSUER"].rsplit(":", 1)[1])
        self.settings = Settings.from_env(env)
        self.app = create_app(self.settings)  # creates the signing keys before workers start
        import_models()
        Base.metadata.create_all(get_db(self.app).engine)
        self.secret = self._seed()
        log = (Path(env["GATEWAY_INSTANCE_DIR"]) / "serve.log").open("wb")
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "gateway"), "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(workers)],
            env={**os.environ, **env}, cwd=ROOT, start_new_session=True,
            # A file, not a pipe: the request log would fill a pipe and block the workers.
            stdout=subprocess.DEVNULL, stderr=log,
        )
        _wait_http(self.port, "/healthz", self.proc)

    def _seed(self) -> str:
        """The bench client and one account with a password (as a desk would leave it)."""
        from gateway import clock
        from gateway.accounts.models import Account, AccountStatus
        from gateway.accounts.passwords import Passwords
        from gateway.app import get_policies
        from gateway.db import get_db
        from gateway.idp.oidc import clients as registry

        now = clock.now()
        with self.app.app_context(), get_db(self.app).begin() as db:
            reg = registry.register(
                db, self.settings, client_id=CLIENT_ID, redirect_uris=[REDIRECT_URI]
            )
            db.add(Account(
                username=USERNAME, username_key=USERNAME.casefold(),
                password_hash=Passwords(get_policies(self.app).accounts.password).hash(PASSWORD),
                bsn=None, surname="Bench", given_names="Bench",
                birth_date=now.date().replace(year=1980), nationality="NLD",
                phone_e164=None, phone_channel=None, phone_verified_at=None,
                email="bench@example.org", email_verified_at=now, language="en",
                status=AccountStatus.ACTIVE.value, created_at=now, activated_at=now,
                failed_logins=0,
            ))
        assert reg.client_secret is not None
        return reg.client_secret

    def login(self, browser: Browser) -> None:
        reply, _ = self.authorize(browser)
        reply = self.follow(browser, reply)
        page = reply.body.decode()
        action = next((a for a in _FORM.findall(page) if a.endswith("/password")), None)
        token = _CSRF.search(page)
        if reply.status != 200 or action is None or token is None:
            raise BenchError(f"ours: no password page ({reply.status})")
        reply = browser.request("POST", _local(action.replace("&amp;", "&")), urlencode({
            "csrf_token": token.group(1), "username": USERNAME, "password": PASSWORD,
        }))
        self.code_from(self.follow(browser, reply))

    def mint(self, browser: Browser, count: int) -> list[tuple[str, str]]:
        """Codes for the SSO session of the account, as the authorization endpoint makes them."""
        import sqlalchemy as sa

        from gateway.db import get_db
        from gateway.flows.sessions import SsoSession
        from gateway.flows.types import AuthnResult
        from gateway.idp.oidc import clients as registry
        from gateway.idp.oidc import subjects, tokens
        from gateway.levels import Level

        out = []
        with self.app.app_context(), get_db(self.app).begin() as db:
            sso = db.scalars(
                sa.select(SsoSession).where(SsoSession.ended_at.is_(None)).limit(1)
            ).one()
            client = registry.get_client(db, self.settings, CLIENT_ID)
            assert client is not None
            result = AuthnResult(
                subject_key=sso.subject_key, account_id=sso.account_id, route=sso.route,
                level=Level(sso.level), amr=sso.amr_values, auth_time=sso.auth_time,
                sso_session_id=sso.id,
            )
            sub = subjects.pairwise_sub(self.settings, client.sector_identifier, sso.subject_key)
            for _ in range(count):
                verifier, challenge = pkce()
                code = tokens.create_grant(
                    db, self.settings, client, redirect_uri=REDIRECT_URI,
                    code_challenge=challenge, nonce=secrets.token_urlsafe(12), scope="openid",
                    sub=sub, result=result,
                )
                out.append((code, verifier))
        return out


class Theirs(Provider):
    name = "theirs"
    authorize_path = "/auth"
    token_path = "/token"

    def __init__(self, port: int, db_url: str, workers: int) -> None:
        self.port = port
        self.secret = secrets.token_urlsafe(32)
        if not (NODE_DIR / "node_modules" / "oidc-provider").is_dir():
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)
        self.proc = subprocess.Popen(
            ["node", "provider.js", "--port", str(port), "--workers", str(workers),
             # "=": a random secret may begin with "-", which parseArgs takes for an option.
             "--db", db_url, f"--secret={self.secret}"],
            cwd=NODE_DIR, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("ready"):
            raise BenchError("theirs: did not start: " + self._stderr())
        # Keep reading its output so a chatty worker can never block on a full pipe.
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                threading.Thread(target=stream.read, daemon=True).start()

    def _stderr(self) -> str:
        self.stop()
        assert self.proc is not None and self.proc.stderr is not None
        return self.proc.stderr.read().decode()[-2000:]

    def login(self, browser: Browser) -> None:
        reply, _ = self.authorize(browser)
        self.code_from(self.follow(browser, reply))

    def mint(self, browser: Browser, count: int) -> list[tuple[str, str]]:
        reply = browser.request("POST", f"/bench/mint?n={count}", "")
        if reply.status != 200:
            raise BenchError(f"theirs: mint {reply.status} {reply.body[:200]!r}")
        return [(c, v) for c, v in json.loads(reply.body)]


def server_cpu(provider: Provider) -> float:
    """CPU seconds (user + system) used so far by the provider's processes: its session
    (start_new_session) holds the master and every worker. Linux /proc only; 0.0 elsewhere."""
    if provider.proc is None:
        return 0.0
    sid = provider.proc.pid
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        # After the command: state ppid pgrp session ... utime(12) stime(13) (0-based here).
        if int(fields[3]) == sid:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def _wait_http(port: int, path: str, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server on port {port} exited ({proc.returncode})")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                conn.close()
                return
        time.sleep(0.2)
    raise BenchError(f"server on port {port} did not answer {path}")


# --- load generation ------------------------------------------------------------------------


@dataclass
class Result:
    done: int
    errors: int
    seconds: float
    latencies: list[float]
    #: CPU seconds the provider's processes used during the phase (`server_cpu`).
    cpu: float = 0.0

    @property
    def cpu_ms(self) -> float:
        """Server CPU per completed operation, in ms: unlike the rates, hardly moved by
        what else runs on the machine."""
        return self.cpu / self.done * 1000 if self.done else float("nan")

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def load(
    browsers: list[Browser], work: Callable[[Browser], bool], seconds: float
) -> Result:
    """Run `work` from every browser in its own thread until it returns False or time is up."""
    latencies: list[float] = []
    errors: list[str] = []
    start_gate = threading.Barrier(len(browsers) + 1)
    deadline = 0.0
    last = [0.0]

    def run(browser: Browser) -> None:
        start_gate.wait()
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                if not work(browser):
                    return
            except (BenchError, OSError, http.client.HTTPException) as exc:
                errors.append(str(exc))
                browser.close()
                continue
            ended = time.perf_counter()
            latencies.append(ended - began)
            last[0] = max(last[0], ended)

    threads = [threading.Thread(target=run, args=(b,), daemon=True) for b in browsers]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline = began + seconds
    start_gate.wait()
    for thread in threads:
        thread.join(seconds + 60)
    if errors:
        print(f"    {len(errors)} errors, first: {errors[0][:300]}", file=sys.stderr)
    return Result(len(latencies), len(errors), max(last[0], began) - began, latencies)


def measured(provider: Provider, run: Callable[[], Result]) -> Result:
    before = server_cpu(provider)
    result = run()
    result.cpu = server_cpu(provider) - before
    return result


def exchanges(
    provider: Provider, browsers: list[Browser], count: int, seconds: float
) -> Result:
    codes = collections.deque(provider.mint(browsers[0], count))

    def work(browser: Browser) -> bool:
        try:
            code, verifier = codes.popleft()
        except IndexError:
            return False
        provider.exchange(browser, code, verifier)
        return True

    return measured(provider, lambda: load(browsers, work, seconds))


def flows(provider: Provider, browsers: list[Browser], count: int, seconds: float) -> Result:
    left = [count]
    lock = threading.Lock()

    def work(browser: Browser) -> bool:
        with lock:
            if left[0] <= 0:
                return False
            left[0] -= 1
        provider.flow(browser)
        return True

    return measured(provider, lambda: load(browsers, work, seconds))


# --- set-up and tear-down -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def bench_database(admin_url: str) -> Iterator[tuple[str, str]]:
    """A database of this run's own (SQLAlchemy URL, libpq URL), dropped at the end."""
    import sqlalchemy as sa

    name = "gwbench_" + secrets.token_hex(4)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}", f"{base.replace('+psycopg', '')}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _drop_redis_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=prefix + "*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


# --- the run --------------------------------------------------------------------------------


def _line(label: str, ours: Result, theirs: Result) -> float:
    ratio = ours.rate / theirs.rate if theirs.rate else float("nan")
    print(
        f"  {label:<18} ours {ours.rate:7.1f}/s (p50 {ours.pct(0.5):6.1f} ms, "
        f"p99 {ours.pct(0.99):6.1f} ms, cpu {ours.cpu_ms:4.2f} ms/op, n={ours.done}, "
        f"err={ours.errors})   "
        f"theirs {theirs.rate:7.1f}/s (p50 {theirs.pct(0.5):6.1f} ms, "
        f"p99 {theirs.pct(0.99):6.1f} ms, cpu {theirs.cpu_ms:4.2f} ms/op, n={theirs.done}, "
        f"err={theirs.errors})   ratio {ratio:.2f}",
        flush=True,
    )
    return ratio


def compare(args: argparse.Namespace, ours: Ours, theirs: Theirs) -> None:
    ours_browsers = [Browser(ours.port) for _ in range(args.concurrency)]
    theirs_browsers = [Browser(theirs.port) for _ in range(args.concurrency)]
    both: list[tuple[Provider, list[Browser]]] = [
        (ours, ours_browsers), (theirs, theirs_browsers)
    ]
    for provider, browsers in both:
        for browser in browsers:
            provider.login(browser)
    print(f"{args.concurrency} browsers logged in at each provider (login is not measured)")
    # Warm-up: first requests (imports, JIT, connection pools) are not what is measured.
    for provider, browsers in both:
        exchanges(provider, browsers, 200, 10)
        flows(provider, browsers, 100, 10)
    ratios: dict[str, list[float]] = {"a": [], "b": []}
    rates: dict[str, list[float]] = collections.defaultdict(list)
    cpu: dict[str, list[float]] = collections.defaultdict(list)
    for round_no in range(1, args.rounds + 1):
        order: list[tuple[Provider, list[Browser]]] = [
            (ours, ours_browsers), (theirs, theirs_browsers)
        ]
        if round_no % 2 == 0:
            order.reverse()
        print(f"round {round_no} ({order[0][0].name} first)")
        results: dict[tuple[str, str], Result] = {}
        for provider, browsers in order:
            results[("a", provider.name)] = exchanges(provider, browsers, args.codes, args.seconds)
        ratios["a"].append(_line("(a) exchanges", results[("a", "ours")],
                                 results[("a", "theirs")]))
        for provider, browsers in order:
            results[("b", provider.name)] = flows(provider, browsers, args.flows, args.seconds)
        ratios["b"].append(_line("(b) full flows", results[("b", "ours")],
                                 results[("b", "theirs")]))
        for (phase, name), result in results.items():
            rates[phase + name].append(result.rate)
            cpu[phase + name].append(result.cpu_ms)
    print(f"summary over {args.rounds} rounds (median [min-max]); "
          f"{args.workers} worker process(es) each, concurrency {args.concurrency}, PostgreSQL")
    for phase, label in (("a", "(a) code exchanges/s"), ("b", "(b) complete flows/s")):
        print(
            f"  {label:<22} ours {_spread(rates[phase + 'ours'], '.1f')}   "
            f"theirs {_spread(rates[phase + 'theirs'], '.1f')}   "
            f"ratio ours/theirs {_spread(ratios[phase], '.2f')}"
        )
        print(
            f"  {'':<22} server CPU ms/op: ours {_spread(cpu[phase + 'ours'], '.2f')}   "
            f"theirs {_spread(cpu[phase + 'theirs'], '.2f')}"
        )
    for browser in ours_browsers + theirs_browsers:
        browser.close()


def _spread(values: list[float], fmt: str) -> str:
    return (f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]")


class InProcess(Browser):
    """A Browser that calls our WSGI app in this process (for profiling; no HTTP server)."""

    def __init__(self, ours: Ours) -> None:
        super().__init__(ours.port)
        self.web = ours.app.test_client(use_cookies=False)

    def request(
        self, method: str, path: str, body: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if body is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        response = self.web.open(path, method=method, data=body, headers=sent)
        reply = Reply(response.status_code, list(response.headers.items()), response.data)
        for value in response.headers.getlist("Set-Cookie"):
            self._set_cookie(value)
        return reply


def profile(ours: Ours, what: str, count: int) -> None:
    """cProfile of our token endpoint (`token`) or of whole flows (`flow`), in this process
    through the WSGI app (one thread, the same PostgreSQL and Redis as the workers)."""
    browser = InProcess(ours)
    ours.login(browser)
    if what == "token":
        codes = ours.mint(browser, count + 20)
        for code, verifier in codes[:20]:
            ours.exchange(browser, code, verifier)

        def one(i: int) -> None:
            ours.exchange(browser, *codes[20 + i])
    else:
        for _ in range(20):
            ours.flow(browser)

        def one(i: int) -> None:
            ours.flow(browser)

    # CPU time, like the comparison's server CPU per operation: wall time would be mostly
    # the waits for PostgreSQL and Redis.
    profiler = cProfile.Profile(time.process_time)
    began = time.perf_counter()
    profiler.enable()
    for i in range(count):
        one(i)
    profiler.disable()
    per = (time.perf_counter() - began) / count * 1000
    print(f"{count} {what}s in-process, {per:.2f} ms each (under cProfile)")
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order).print_stats(45)
        print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="processes per provider")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="time bound of one phase")
    parser.add_argument("--codes", type=int, default=1500, help="codes minted per (a) phase")
    parser.add_argument("--flows", type=int, default=1500, help="flows at most per (b) phase")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--profile", choices=("token", "flow"),
                        help="instead of comparing: cProfile our code exchanges or flows")
    parser.add_argument("--profile-count", type=int, default=300)
    parser.add_argument("--pg-admin", default=os.environ.get("GATEWAY_TEST_PG_ADMIN",
                                                             PG_ADMIN_DEFAULT))
    parser.add_argument("--redis", default=os.environ.get("GATEWAY_TEST_REDIS", REDIS_DEFAULT))
    args = parser.parse_args()

    run_id = secrets.token_hex(4)
    redis_prefix = f"gwbench:{run_id}:"
    instance = Path(tempfile.mkdtemp(prefix="gwbench-"))
    providers: list[Provider] = []
    started = time.monotonic()
    try:
        with bench_database(args.pg_admin) as (sa_url, pg_url):
            try:
                ours = Ours({
                    "GATEWAY_ISSUER": f"http://127.0.0.1:{_free_port()}",
                    "GATEWAY_INSTANCE_DIR": str(instance),
                    "GATEWAY_DATABASE_URL": sa_url,
                    "GATEWAY_REDIS_URL": args.redis,
                    "GATEWAY_REDIS_PREFIX": redis_prefix,
                    "GATEWAY_SECRET_KEY": secrets.token_urlsafe(48),
                }, args.workers)
                providers.append(ours)
                if args.profile:
                    profile(ours, args.profile, args.profile_count)
                    return
                providers.append(Theirs(_free_port(), pg_url, args.workers))
                print(f"ours: gateway serve --workers {args.workers} (granian WSGI); "
                      f"theirs: oidc-provider, node cluster of {args.workers}; "
                      f"both on PostgreSQL ({sa_url.rsplit('/', 1)[1]})", flush=True)
                compare(args, ours, providers[1])  # type: ignore[arg-type]
            finally:
                for provider in providers:
                    provider.stop()
                for provider in providers:
                    if isinstance(provider, Ours):
                        from gateway.db import get_db

                        get_db(provider.app).dispose()  # or DROP DATABASE waits for it
    finally:
        _drop_redis_prefix(args.redis, redis_prefix)
        shutil.rmtree(instance, ignore_errors=True)
        print(f"run took {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
