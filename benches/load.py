#!/usr/bin/env python3
"""Load benchmark: lb against nginx and HAProxy, same upstreams, same load, interleaved rounds.

Usage: python3 benches/load.py [--duration 10] [--connections 64] [--rounds 3] [--observability]
                               [--routes N] [--lb-only] [--floor] [--pinned] [--scenario plain|slow|4k|cache]

Builds lb and the benchmark upstream (examples/upstream.rs) in release mode, starts three upstream
servers on 127.0.0.1, then for each round runs every proxy in turn (lb, then nginx and HAProxy when
installed) with an equivalent config: round robin over the three servers, keep-alive to clients and
upstreams (up to 1,024 idle upstream connections each), X-Forwarded-For/Proto/Host set, an
X-Request-Id to the upstream and the client (the client's own if it sent one, else a new one, as lb
does by default), access logs off, two worker threads/processes. wrk drives
each with HTTP/1.1 keep-alive. For each run it prints requests/s, p50 and p99 latency and the proxy's
CPU time per request (user + system, all its processes and threads, from /proc; closed-loop runs also
print the two apart). The summary is the
median over rounds and the ratio of each peer to lb.

With --pinned each proxy runs alone on CPU 1 with one worker (lb `TOKIO_WORKER_THREADS=1`, nginx
`worker_processes 1`, HAProxy `nbthread 1`), and wrk (one thread) and the upstreams share CPU 0: the
proxy's CPU per request is then not blurred by the load generator's. The summary prints lb's CPU per
request against each peer's (lb/nginx, lb/HAProxy). --scenario picks the upstreams: `plain` (a short
body), `slow` (the third upstream answers 10 ms later), `4k` (4 KiB bodies), or `cache` (plain
upstreams, every proxy answering from its response cache: lb's `[caches]`, nginx's `proxy_cache` on a
directory in /dev/shm, HAProxy's `cache`; all requests are for one URL). E.g. the upstream issue's
four cells: `--pinned --connections 64`, `--pinned --connections 256`, `--pinned --connections 256
--scenario slow`, `--pinned --connections 64 --scenario 4k`.

Latency: wrk's p50 and p99, and p99.9 from wrk's own histogram (a `done` hook in Lua). With --rate R
the load is open instead of closed: h2load (HTTP/1.1, the same connections) sends R requests per second
in all whatever the answers' speed, so every proxy gets the same load, below all of their capacities,
and p50/p99/p99.9 come from h2load's per-request log; pick R below the slowest proxy's req/s.

With --routes N it also runs lb with N exact-host routes (h0.bench.test .. h{N-1}.bench.test, all to
the same pool) and wrk asking for the last host, so the routing table's size is the only difference
from the plain lb run (one route).

With --floor it also runs examples/floor.rs, the stack lb is built on (tokio's runtime as lb's, hyper's
HTTP/1 server and client, round robin over kept-alive connections) with none of lb's own work: what
lb's features cost is the distance between the two. It has one worker, so compare it with --pinned.
The summary then prints each one's p99 against its own p50 and against nginx's p99, round by round.

With --tls it then runs an HTTPS scenario on the same proxies (ECDSA P-256 certificate made with
openssl, TLS 1.3, ALPN h2): h2load over HTTP/2 (--connections, --streams each; default 64 x 10) for
throughput, CPU per request and p50/p99 (from h2load's per-request log), and `openssl s_time -new`
for full handshakes per second and the proxy's CPU per handshake (one client process; the proxy's
CPU is what compares). With --pinned as above (h2load with one thread on CPU 0); the HTTP/2 issue's
cell is `--pinned --tls-only --connections 32 --streams 8`.

Needs wrk (Debian: apt-get install wrk); --tls and --rate also need h2load (nghttp2-client), --tls
openssl too. nginx and HAProxy are optional (apt-get install nginx-light haproxy). All traffic stays on 127.0.0.1;
every run is bounded by --duration.
"""
import atexit
import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAMS = ["127.0.0.1:19101", "127.0.0.1:19102", "127.0.0.1:19103"]
PORTS = {"lb": 18080, "nginx": 18081, "haproxy": 18082, "lb-nometrics": 18083, "lb-access": 18084,
         "lb-routes": 18085, "floor": 18086,
         "lb-tls": 18443, "nginx-tls": 18444, "haproxy-tls": 18445}
TICK = os.sysconf("SC_CLK_TCK")
# Worker threads/processes per proxy (1 with --pinned), and the CPU prefixes for the proxy and for the
# load generator and upstreams (empty unless --pinned).
WORKERS = 2
PROXY_CPU, LOAD_CPU = [], []
# Host header wrk sends to a proxy, when not the default (127.0.0.1:port).
HOSTS = {}
# h2load's per-request logs go here, not beside the proxies' configs: lb watches its config file's
# directory, and a log written there would wake its watcher on every write (measured: 0.4 wake-ups
# and 20% more CPU per HTTP/2 request).
LOGS = tempfile.gettempdir()


def cpu_seconds(pids):
    """User + system CPU seconds of the given processes (all their threads)."""
    return sum(cpu_split(pids))


def cpu_split(pids):
    """User and system CPU seconds of the given processes (all their threads), apart."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])  # utime
            system += int(fields[12])  # stime
        except FileNotFoundError:
            pass
    return user / TICK, system / TICK


def process_tree(pid):
    """pid and all its descendants (nginx and haproxy fork workers)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                pass
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def wait_port(port, limit=10.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listening on {port} after {limit}s")


def lb_variant(name, extra):
    """lb with metrics on and access log off (the defaults), or a variant of that."""
    def make(tmp):
        servers = ", ".join(f'{{ addr = "{a}" }}' for a in UPSTREAMS)
        path = os.path.join(tmp, f"{name}.toml")
        with open(path, "w") as f:
            f.write(f'[[listeners]]\naddr = "127.0.0.1:{PORTS[name]}"\n\n'
                    # As many idle upstream connections as nginx's `keepalive` below.
                    f'[limits]\nupstream_idle_per_server = 1024\n\n'
                    f'[pools.app]\nstrategy = "round_robin"\nservers = [{servers}]\n\n{extra}\n')
        env = {"LB_LOG": "warn", "TOKIO_WORKER_THREADS": str(WORKERS)}
        return [*PROXY_CPU, os.path.join(ROOT, "target/release/lb"), "--config", path], env
    return make


lb_config = lb_variant("lb", '[admin]\naddr = "127.0.0.1:0"')


def floor_config(tmp):
    """examples/floor.rs: hyper and tokio as lb sets them up, and nothing of lb's own (one worker)."""
    return [*PROXY_CPU, os.path.join(ROOT, "target/release/examples/floor"), f"127.0.0.1:{PORTS['floor']}",
            *UPSTREAMS], {}

# --scenario cache: every proxy answers from its response cache (all requests are for one URL, so
# every request after the first is a hit). The upstreams say `Cache-Control: max-age=60`. nginx's
# cache is a memory-backed directory (/dev/shm), as the caching issue asks.
CACHE = False
lb_cache_config = lb_variant("lb", '[admin]\naddr = "127.0.0.1:0"\n\n[[routes]]\npool = "app"\ncache = "c"\n\n'
                                   '[caches.c]\n')


def nginx_config(tmp):
    servers = "".join(f"    server {a};\n" for a in UPSTREAMS)
    path = os.path.join(tmp, "nginx.conf")
    with open(path, "w") as f:
        f.write(f"""worker_processes {WORKERS};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  upstream app {{
{servers}    keepalive 1024;
  }}
  map $http_x_request_id $lb_request_id {{ default $http_x_request_id; "" $request_id; }}
{nginx_cache_path(tmp)}
  server {{
    listen 127.0.0.1:{PORTS["nginx"]};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Request-Id $lb_request_id;
      add_header X-Request-Id $lb_request_id always;
{"      proxy_cache c;" if CACHE else ""}
    }}
  }}
}}
""")
    return [*PROXY_CPU, "nginx", "-c", path, "-p", tmp], {}


def nginx_cache_path(tmp):
    if not CACHE:
        return ""
    path = tempfile.mkdtemp(prefix="lb-bench-nginx-cache-", dir="/dev/shm")
    os.chmod(path, 0o777)  # nginx's workers may run as another user
    atexit.register(shutil.rmtree, path, True)
    return f"  proxy_cache_path {path} levels=1:2 keys_zone=c:10m max_size=64m;"


def haproxy_config(tmp):
    servers = "".join(f"  server s{i} {a}\n" for i, a in enumerate(UPSTREAMS))
    path = os.path.join(tmp, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(f"""global
  nbthread {WORKERS}
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:{PORTS["haproxy"]}
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Request-Id %[uuid()] unless {{ req.hdr(x-request-id) -m found }}
  http-request set-var(txn.rid) req.hdr(x-request-id)
  http-after-response set-header X-Request-Id %[var(txn.rid)]
  default_backend be
backend be
  balance roundrobin
{servers}""")
        if CACHE:
            f.write("""  http-request cache-use c
  http-response cache-store c
cache c
  total-max-size 64
  max-age 60
""")
    return [*PROXY_CPU, "haproxy", "-f", path, "-db"], {}


# Prints wrk's p99.9 (its histogram, in microseconds) after the run: wrk's --latency stops at p99.
P999_LUA = 'done = function(summary, latency, requests) io.write(string.format("p99.9 %d\\n", latency:percentile(99.9))) end\n'


def parse_wrk(text):
    def latency(label):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    p999 = re.search(r"^p99\.9 (\d+)$", text, re.M)
    socket_errors = re.search(r"Socket errors: (.*)", text)
    return {"requests": int(re.search(r"(\d+) requests in", text).group(1)),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
            "p50_ms": latency("50"), "p99_ms": latency("99"),
            "p999_ms": int(p999.group(1)) / 1e3 if p999 else float("nan"),
            "non2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


@contextlib.contextmanager
def running(name, make, tmp):
    """The proxy `name` started from `make`, ready on its port; stopped (SIGTERM) on exit."""
    cmd, env = make(tmp)
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(PORTS[name])
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]


def run_rate(name, make, tmp, args):
    """h2load over HTTP/1.1 at a fixed total rate (--rate); latency from its per-request log."""
    with running(name, make, tmp) as proc:
        url = f"http://127.0.0.1:{PORTS[name]}/"
        host = ["-H", f"host: {HOSTS[name]}"] if name in HOSTS else []
        rps = max(1, round(args.rate / args.connections))
        subprocess.run([*LOAD_CPU, "h2load", "--h1", "-t1", f"-c{args.connections}", "-D1", f"--rps={rps}", *host,
                        url], capture_output=True)
        log = os.path.join(LOGS, f"{name}-h2load.log")
        pids = process_tree(proc.pid)
        before = cpu_seconds(pids)
        subprocess.run([*LOAD_CPU, "h2load", "--h1", "-t1", f"-c{args.connections}", f"-D{args.duration}",
                        f"--rps={rps}", f"--log-file={log}", *host, url],
                       capture_output=True, text=True, timeout=args.duration + 30)
        cpu = cpu_seconds(pids) - before
    rows = [line.split("\t") for line in open(log).read().splitlines() if line.count("\t") >= 2]
    ok = sorted(int(r[2]) / 1e3 for r in rows if r[1].startswith("2"))
    return {"requests": len(rows), "rps": len(rows) / args.duration, "p50_ms": percentile(ok, 50),
            "p99_ms": percentile(ok, 99), "p999_ms": percentile(ok, 99.9), "non2xx": len(rows) - len(ok),
            "socket_errors": "", "cpu_us_per_req": cpu / max(len(rows), 1) * 1e6}


def run_one(name, make, tmp, args):
    if args.rate:
        return run_rate(name, make, tmp, args)
    lua = os.path.join(tmp, "p999.lua")
    with open(lua, "w") as f:
        f.write(P999_LUA)
    with running(name, make, tmp) as proc:
        url = f"http://127.0.0.1:{PORTS[name]}/"
        host = ["-H", f"Host: {HOSTS[name]}"] if name in HOSTS else []
        # Warm up connection pools, then measure.
        threads = "-t1" if LOAD_CPU else "-t2"
        subprocess.run([*LOAD_CPU, "wrk", threads, f"-c{args.connections}", "-d1s", *host, url], capture_output=True)
        pids = process_tree(proc.pid)
        before = cpu_split(pids)
        out = subprocess.run([*LOAD_CPU, "wrk", threads, f"-c{args.connections}", f"-d{args.duration}s", "--latency",
                              "-s", lua, *host, url],
                             capture_output=True, text=True, timeout=args.duration + 30).stdout
        user, system = (after - b for after, b in zip(cpu_split(pids), before))
    result = parse_wrk(out)
    requests = max(result["requests"], 1)
    result["cpu_us_per_req"] = (user + system) / requests * 1e6
    result["user_us_per_req"], result["sys_us_per_req"] = user / requests * 1e6, system / requests * 1e6
    return result


def make_cert(tmp):
    """A self-signed ECDSA P-256 certificate for 127.0.0.1: cert, key, and both in one file (HAProxy)."""
    cert, key, both = (os.path.join(tmp, n) for n in ("bench.pem", "bench.key", "bench-both.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:bench.test,IP:127.0.0.1"], check=True, capture_output=True)
    with open(both, "w") as out:
        out.write(open(cert).read() + open(key).read())
    return cert, key, both


def lb_tls_config(tmp):
    cert, key = os.path.join(tmp, "bench.pem"), os.path.join(tmp, "bench.key")  # from make_cert
    servers = ", ".join(f'{{ addr = "{a}" }}' for a in UPSTREAMS)
    path = os.path.join(tmp, "lb-tls.toml")
    with open(path, "w") as f:
        f.write(f'[[listeners]]\naddr = "127.0.0.1:{PORTS["lb-tls"]}"\n[listeners.tls]\n'
                f'certificates = [{{ cert = "{cert}", key = "{key}" }}]\n\n'
                # As many idle upstream connections as nginx's `keepalive` (see lb_variant).
                f'[limits]\nupstream_idle_per_server = 1024\n\n'
                f'[pools.app]\nstrategy = "round_robin"\nservers = [{servers}]\n\n[admin]\naddr = "127.0.0.1:0"\n')
    return ([*PROXY_CPU, os.path.join(ROOT, "target/release/lb"), "--config", path],
            {"LB_LOG": "warn", "TOKIO_WORKER_THREADS": str(WORKERS)})


def nginx_tls_config(tmp):
    cmd, env = nginx_config(tmp)
    path = os.path.join(tmp, "nginx.conf")
    conf = open(path).read().replace(
        f"listen 127.0.0.1:{PORTS['nginx']};",
        f"listen 127.0.0.1:{PORTS['nginx-tls']} ssl http2;\n"
        f"    ssl_certificate {tmp}/bench.pem; ssl_certificate_key {tmp}/bench.key;\n"
        f"    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_tickets on;\n"
        # nginx closes a connection after 1,000 requests by default (HTTP/2 included); h2load does
        # not reconnect, and neither lb nor HAProxy has such a limit.
        f"    keepalive_requests 1000000;")
    with open(path, "w") as f:
        f.write(conf)
    return cmd, env


def haproxy_tls_config(tmp):
    cmd, env = haproxy_config(tmp)
    path = os.path.join(tmp, "haproxy.cfg")
    conf = open(path).read().replace(
        f"bind 127.0.0.1:{PORTS['haproxy']}",
        f"bind 127.0.0.1:{PORTS['haproxy-tls']} ssl crt {tmp}/bench-both.pem alpn h2,http/1.1 ssl-min-ver TLSv1.2"
    ).replace("X-Forwarded-Proto http", "X-Forwarded-Proto https")
    with open(path, "w") as f:
        f.write(conf)
    return cmd, env


def run_tls_one(name, make, tmp, args):
    """h2load over HTTP/2 for throughput, then openssl s_time for full handshakes."""
    port = PORTS[name]
    with running(name, make, tmp) as proc:
        url = f"https://127.0.0.1:{port}/"
        threads = "1" if LOAD_CPU else "2"
        # Warm up with the measured load itself (as wrk's warm-up does for HTTP/1.1), so that the upstream
        # connections it needs are open before the measurement starts.
        subprocess.run([*LOAD_CPU, "h2load", "-t", threads, "-c", str(args.connections), "-m", str(args.streams),
                        "-D", "2", url], capture_output=True)
        pids = process_tree(proc.pid)
        before = cpu_seconds(pids)
        log = os.path.join(LOGS, f"{name}-h2load.log")
        out = subprocess.run([*LOAD_CPU, "h2load", "-t", threads, "-c", str(args.connections), "-m", str(args.streams),
                              "-D", str(args.duration), f"--log-file={log}", url],
                             capture_output=True, text=True, timeout=args.duration + 30).stdout
        cpu = cpu_seconds(pids) - before
        rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
        m = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", out)
        done, failed = int(m.group(2)), int(m.group(3))
        rows = [line.split("\t") for line in open(log).read().splitlines() if line.count("\t") >= 2]
        ok = sorted(int(r[2]) / 1e3 for r in rows if r[1].startswith("2"))
        before = cpu_seconds(pids)
        st = subprocess.run([*LOAD_CPU, "openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new",
                             "-time", str(args.duration)],
                            capture_output=True, text=True, timeout=args.duration + 30).stdout
        hs_cpu = cpu_seconds(pids) - before
        hm = re.search(r"(\d+) connections in (\d+) real seconds", st)
        handshakes = int(hm.group(1)) if hm else 0
        hs_rate = handshakes / max(int(hm.group(2)) if hm else 1, 1)
    return {"rps": rps, "failed": failed, "cpu_us_per_req": cpu / max(done, 1) * 1e6,
            "p50_ms": percentile(ok, 50), "p99_ms": percentile(ok, 99),
            "handshakes_per_s": hs_rate, "cpu_us_per_handshake": hs_cpu / max(handshakes, 1) * 1e6}


def run_rounds(proxies, run, tmp, args, line):
    """Every proxy in turn, `args.rounds` times (interleaved, so drift hits all alike); prints one
    line per run and returns each proxy's results."""
    results = {name: [] for name, _ in proxies}
    for r in range(args.rounds):
        for name, make in proxies:
            res = run(name, make, tmp, args)
            results[name].append(res)
            print(f"round {r + 1} {name:12} {line(res)}", flush=True)
    return results


def tls_phase(args, tmp):
    for tool in ("h2load", "openssl"):
        if not shutil.which(tool):
            print(f"# --tls needs {tool} (apt-get install nghttp2-client openssl): skipped")
            return
    make_cert(tmp)
    proxies = [("lb-tls", lb_tls_config)]
    for name, make in [("nginx-tls", nginx_tls_config), ("haproxy-tls", haproxy_tls_config)]:
        if shutil.which(name.split("-")[0]):
            proxies.append((name, make))
    results = run_rounds(proxies, run_tls_one, tmp, args, lambda res: (
        f"{res['rps']:>10.0f} req/s  p50 {res['p50_ms']:.2f} ms  p99 {res['p99_ms']:.2f} ms  "
        f"cpu {res['cpu_us_per_req']:.1f} us/req  failed {res['failed']}  "
        f"{res['handshakes_per_s']:.0f} handshakes/s  cpu {res['cpu_us_per_handshake']:.0f} us/handshake"))
    print(f"\nHTTPS: median of {args.rounds} rounds; h2load {args.connections} connections x {args.streams} streams, "
          f"{args.duration}s; s_time -new {args.duration}s; TLS 1.3, ECDSA P-256; "
          + ("pinned: proxy alone on CPU 1 with one worker" if PROXY_CPU else f"{os.cpu_count()} cores"))
    print(f"{'proxy':12} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>11} {'vs lb':>7} "
          f"{'hs/s':>7} {'cpu us/hs':>10} {'vs lb':>7}")
    keys = ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "handshakes_per_s", "cpu_us_per_handshake")
    med = {name: {k: statistics.median(r[k] for r in results[name]) for k in keys} for name, _ in proxies}
    base = med["lb-tls"]
    for name, _ in proxies:
        m = med[name]
        print(f"{name:12} {m['rps']:>10.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {m['cpu_us_per_req']:>11.1f} "
              f"{m['cpu_us_per_req'] / base['cpu_us_per_req']:>6.2f}x {m['handshakes_per_s']:>7.0f} "
              f"{m['cpu_us_per_handshake']:>10.0f} {m['cpu_us_per_handshake'] / base['cpu_us_per_handshake']:>6.2f}x")
    for peer in ("nginx-tls", "haproxy-tls"):
        if peer in med:
            print(f"lb / {peer.split('-')[0]}: {base['cpu_us_per_req'] / med[peer]['cpu_us_per_req']:.2f}x CPU per "
                  f"HTTP/2 request, {base['p99_ms'] / med[peer]['p99_ms']:.2f}x p99")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tls", action="store_true", help="also run the HTTPS scenario (h2load, s_time)")
    ap.add_argument("--tls-only", action="store_true", help="run only the HTTPS scenario")
    ap.add_argument("--streams", type=int, default=10, help="HTTP/2 streams per connection in the HTTPS scenario")
    ap.add_argument("--observability", action="store_true",
                    help="also run lb without metrics and lb with a JSON access log, to price each")
    ap.add_argument("--routes", type=int, default=0,
                    help="also run lb with this many exact-host routes, requesting the last host")
    ap.add_argument("--lb-only", action="store_true", help="skip nginx and HAProxy")
    ap.add_argument("--floor", action="store_true",
                    help="also run examples/floor.rs (the stack without lb's own work; one worker, so "
                         "with --pinned)")
    ap.add_argument("--pinned", action="store_true",
                    help="proxy alone on CPU 1 with one worker; wrk and upstreams on CPU 0")
    ap.add_argument("--rate", type=int, default=0,
                    help="open load: this many requests/s in all (h2load --rps), below every proxy's capacity")
    ap.add_argument("--scenario", choices=["plain", "slow", "4k", "cache"], default="plain",
                    help="upstreams: short body (plain), third one 10 ms slower (slow), 4 KiB bodies (4k); "
                         "or every proxy answering from its response cache (cache)")
    args = ap.parse_args()
    global WORKERS, PROXY_CPU, LOAD_CPU, CACHE, LOGS
    CACHE = args.scenario == "cache"
    if args.pinned:
        if not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
            sys.exit("--pinned needs taskset and two CPUs")
        WORKERS, PROXY_CPU, LOAD_CPU = 1, ["taskset", "-c", "1"], ["taskset", "-c", "0"]
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install -y wrk")
    subprocess.run(["cargo", "build", "--release", "--bin", "lb", "--example", "upstream",
                    *(["--example", "floor"] if args.floor else [])], cwd=ROOT, check=True)
    proxies = [("lb", lb_cache_config if CACHE else lb_config)]
    if args.floor:
        proxies.append(("floor", floor_config))
    if args.observability:
        proxies += [("lb-nometrics", lb_variant("lb-nometrics", "[admin]\nenabled = false")),
                    ("lb-access", lb_variant("lb-access", '[admin]\naddr = "127.0.0.1:0"\n[log]\naccess = "json"'))]
    if args.routes > 0:
        routes = "".join(f'[[routes]]\nhost = "h{i}.bench.test"\npool = "app"\n' for i in range(args.routes))
        proxies.append(("lb-routes", lb_variant("lb-routes", f'[admin]\naddr = "127.0.0.1:0"\n{routes}')))
        HOSTS["lb-routes"] = f"h{args.routes - 1}.bench.test"
    for name, make in [("nginx", nginx_config), ("haproxy", haproxy_config)]:
        if args.lb_only:
            break
        if shutil.which(name):
            proxies.append((name, make))
        else:
            print(f"# {name} not installed: skipped")
    served = list(UPSTREAMS)
    if args.scenario == "slow":
        served[-1] += "+10ms"
    body = ["--body", "4096"] if args.scenario == "4k" else []
    if CACHE:
        body = ["--cache-control", "max-age=60"]
    upstream = subprocess.Popen([*LOAD_CPU, os.path.join(ROOT, "target/release/examples/upstream"), *body, *served],
                                stdout=subprocess.PIPE)
    upstream.stdout.readline()
    try:
        with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as logs:
            LOGS = logs
            if args.tls or args.tls_only:
                tls_phase(args, tmp)
            if args.tls_only:
                return
            results = run_rounds(proxies, run_one, tmp, args, lambda res: (
                f"{res['rps']:>10.0f} req/s  p50 {res['p50_ms']:.2f} ms  p99 {res['p99_ms']:.2f} ms  "
                f"p99.9 {res['p999_ms']:.2f} ms  "
                f"cpu {res['cpu_us_per_req']:.1f} us/req"
                + (f" (user {res['user_us_per_req']:.1f}, sys {res['sys_us_per_req']:.1f})" if "user_us_per_req" in res else "")
                + f"  non-2xx {res['non2xx']} {res['socket_errors']}"))
    finally:
        upstream.terminate()
    print(f"\nmedian of {args.rounds} rounds, {args.connections} connections, {args.duration}s each, "
          f"HTTP/1.1 keep-alive, scenario {args.scenario}, "
          + (f"fixed rate {args.rate} req/s (h2load), " if args.rate else "closed loop (wrk), ")
          + ("pinned: proxy alone on CPU 1 with one worker" if args.pinned else f"{os.cpu_count()} cores"))
    print(f"{'proxy':12} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'cpu us/req':>11} {'cpu vs lb':>10}")
    lb_cpu = statistics.median(r["cpu_us_per_req"] for r in results["lb"])
    for name, _ in proxies:
        med = {k: statistics.median(r[k] for r in results[name])
               for k in ("rps", "p50_ms", "p99_ms", "p999_ms", "cpu_us_per_req")}
        split = ""
        if all("user_us_per_req" in r for r in results[name]):
            split = (f"  user {statistics.median(r['user_us_per_req'] for r in results[name]):.1f}, "
                     f"sys {statistics.median(r['sys_us_per_req'] for r in results[name]):.1f}")
        print(f"{name:12} {med['rps']:>10.0f} {med['p50_ms']:>8.2f} {med['p99_ms']:>8.2f} {med['p999_ms']:>9.2f} "
              f"{med['cpu_us_per_req']:>11.1f} {med['cpu_us_per_req'] / lb_cpu:>9.2f}x{split}")
    for peer in ("floor", "nginx", "haproxy"):
        if peer in results:
            ratio = lb_cpu / statistics.median(r["cpu_us_per_req"] for r in results[peer])
            print(f"lb / {peer}: {ratio:.2f}x CPU per request")
    if "floor" in results and "nginx" in results:
        for name in ("lb", "floor"):
            own = [r["p99_ms"] / r["p50_ms"] for r in results[name]]
            vs = [r["p99_ms"] / n["p99_ms"] for r, n in zip(results[name], results["nginx"])]
            print(f"{name}: p99 / own p50 per round {' '.join(f'{x:.2f}' for x in own)}; "
                  f"p99 / nginx's p99 per round {' '.join(f'{x:.2f}' for x in vs)}")


if __name__ == "__main__":
    main()
