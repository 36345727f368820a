#!/usr/bin/env python3
"""Load benchmark: lb against nginx and HAProxy, same upstreams, same load, interleaved rounds.

Usage: python3 benches/load.py [--duration 10] [--connections 64] [--rounds 3] [--observability]

Builds lb and the benchmark upstream (examples/upstream.rs) in release mode, starts three upstream
servers on 127.0.0.1, then for each round runs every proxy in turn (lb, then nginx and HAProxy when
installed) with an equivalent config: round robin over the three servers, keep-alive to clients and
upstreams, X-Forwarded-For/Proto/Host set, access logs off, two worker threads/processes. wrk drives
each with HTTP/1.1 keep-alive. For each run it prints requests/s, p50 and p99 latency and the proxy's
CPU time per request (user + system, all its processes and threads, from /proc). The summary is the
median over rounds and the ratio of each peer to lb.

Needs wrk (Debian: apt-get install wrk). nginx and HAProxy are optional (apt-get install nginx-light
haproxy). All traffic stays on 127.0.0.1; every run is bounded by --duration.
"""
import argparse
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
PORTS = {"lb": 18080, "nginx": 18081, "haproxy": 18082, "lb-nometrics": 18083, "lb-access": 18084}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    """User + system CPU seconds of the given processes (all their threads)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except FileNotFoundError:
            pass
    return total / TICK


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
                    f'[pools.app]\nstrategy = "round_robin"\nservers = [{servers}]\n\n{extra}\n')
        env = {"LB_LOG": "warn", "TOKIO_WORKER_THREADS": "2"}
        return [os.path.join(ROOT, "target/release/lb"), "--config", path], env
    return make


lb_config = lb_variant("lb", '[admin]\naddr = "127.0.0.1:0"')


def nginx_config(tmp):
    servers = "".join(f"    server {a};\n" for a in UPSTREAMS)
    path = os.path.join(tmp, "nginx.conf")
    with open(path, "w") as f:
        f.write(f"""worker_processes 2;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  upstream app {{
{servers}    keepalive 64;
  }}
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
    }}
  }}
}}
""")
    return ["nginx", "-c", path, "-p", tmp], {}


def haproxy_config(tmp):
    servers = "".join(f"  server s{i} {a}\n" for i, a in enumerate(UPSTREAMS))
    path = os.path.join(tmp, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(f"""global
  nbthread 2
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
  default_backend be
backend be
  balance roundrobin
{servers}""")
    return ["haproxy", "-f", path, "-db"], {}


def parse_wrk(text):
    def latency(label):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: (.*)", text)
    return {"requests": int(re.search(r"(\d+) requests in", text).group(1)),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
            "p50_ms": latency("50"), "p99_ms": latency("99"),
            "non2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


def run_one(name, make, tmp, args):
    cmd, env = make(tmp)
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(PORTS[name])
        url = f"http://127.0.0.1:{PORTS[name]}/"
        # Warm up connection pools, then measure.
        subprocess.run(["wrk", "-t2", f"-c{args.connections}", "-d1s", url], capture_output=True)
        pids = process_tree(proc.pid)
        before = cpu_seconds(pids)
        out = subprocess.run(["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration}s", "--latency", url],
                             capture_output=True, text=True, timeout=args.duration + 30).stdout
        cpu = cpu_seconds(pids) - before
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    result = parse_wrk(out)
    result["cpu_us_per_req"] = cpu / max(result["requests"], 1) * 1e6
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--observability", action="store_true",
                    help="also run lb without metrics and lb with a JSON access log, to price each")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install -y wrk")
    subprocess.run(["cargo", "build", "--release", "--bin", "lb", "--example", "upstream"], cwd=ROOT, check=True)
    proxies = [("lb", lb_config)]
    if args.observability:
        proxies += [("lb-nometrics", lb_variant("lb-nometrics", "[admin]\nenabled = false")),
                    ("lb-access", lb_variant("lb-access", '[admin]\naddr = "127.0.0.1:0"\n[log]\naccess = "json"'))]
    for name, make in [("nginx", nginx_config), ("haproxy", haproxy_config)]:
        if shutil.which(name):
            proxies.append((name, make))
        else:
            print(f"# {name} not installed: skipped")
    upstream = subprocess.Popen([os.path.join(ROOT, "target/release/examples/upstream"), *UPSTREAMS],
                                stdout=subprocess.PIPE)
    upstream.stdout.readline()
    results = {name: [] for name, _ in proxies}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                for name, make in proxies:
                    res = run_one(name, make, tmp, args)
                    results[name].append(res)
                    print(f"round {r + 1} {name:8} {res['rps']:>10.0f} req/s  p50 {res['p50_ms']:.2f} ms  "
                          f"p99 {res['p99_ms']:.2f} ms  cpu {res['cpu_us_per_req']:.1f} us/req  "
                          f"non-2xx {res['non2xx']} {res['socket_errors']}", flush=True)
    finally:
        upstream.terminate()
    print(f"\nmedian of {args.rounds} rounds, {args.connections} connections, {args.duration}s each, "
          f"HTTP/1.1 keep-alive, {os.cpu_count()} cores")
    print(f"{'proxy':8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>11} {'cpu vs lb':>10}")
    lb_cpu = statistics.median(r["cpu_us_per_req"] for r in results["lb"])
    for name, _ in proxies:
        med = {k: statistics.median(r[k] for r in results[name])
               for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")}
        print(f"{name:8} {med['rps']:>10.0f} {med['p50_ms']:>8.2f} {med['p99_ms']:>8.2f} "
              f"{med['cpu_us_per_req']:>11.1f} {med['cpu_us_per_req'] / lb_cpu:>9.2f}x")


if __name__ == "__main__":
    main()
