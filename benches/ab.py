#!/usr/bin/env python3
"""Interleaved A/B of lb builds, for a change's before and after in one session.

Usage: python3 benches/ab.py ROUNDS DURATION CONNS PATH NAME=BINARY[:ENV=VAL,...] ...
e.g.   python3 benches/ab.py 4 6 64 / before=/tmp/lb-before after=target/release/lb

Three upstreams (examples/upstream.rs, built in release mode first: `cargo build --release --example
upstream`) and wrk -t1 run on CPU 0, lb alone on CPU 1 (one runtime worker), as in the reference
harness's pinned mode. Each round runs every build once (order rotated): a fresh lb, 2 s of warm-up,
then DURATION seconds of wrk with CONNS keep-alive connections. Prints lb's CPU per request (user +
system from /proc), req/s and wrk's p50/p99 per run, then the median (min-max) over rounds. Each run
also prints the inter-processor interrupts CPU 0 received per request ("ipi": rescheduling and
function-call interrupts from /proc/interrupts) and how idle CPU 0 was: lb sends most of them when its
writes wake wrk or an upstream on an idle CPU 0, and in a VM each costs the sender several
microseconds of system time (docs/performance.md, "Wake-up interrupts").
Needs wrk and taskset; all traffic stays on 127.0.0.1 and every run is bounded by DURATION.
AB_ROUTE_EXTRA, when set, is appended to the one route's keys (e.g. an edge policy), for every build.
AB_RATE=R, when set, sends R requests a second in all (h2load --h1 -t1, open load over the same CONNS
connections) instead of wrk's closed loop: with a rate per connection below 100 a second, every
request comes after an idle spell longer than lb's 10 ms release; the latency columns then show
h2load's mean and max (its percentiles are not in its summary)."""
import os, re, subprocess, sys, time, socket, statistics, signal, tempfile
TICK = os.sysconf("SC_CLK_TCK")
rounds, dur, conns, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
RATE = int(os.environ.get("AB_RATE", "0"))
variants = []
for a in sys.argv[5:]:
    name, rest = a.split("=", 1)
    binary, _, envs = rest.partition(":")
    env = dict(os.environ); env["LB_LOG"] = "warn"
    for kv in filter(None, envs.split(",")):
        k, v = kv.split("="); env[k] = v
    variants.append((name, binary, env))
conf = os.path.join(tempfile.mkdtemp(), "ab-lb.toml")
open(conf, "w").write('''[[listeners]]
addr = "127.0.0.1:18080"
[limits]
max_connections = 20000
upstream_idle_per_server = 1024
[timeouts]
keepalive = "300s"
[pools.backends]
strategy = "round_robin"
servers = [{ name = "b1", addr = "127.0.0.1:18081" }, { name = "b2", addr = "127.0.0.1:18082" }, { name = "b3", addr = "127.0.0.1:18083" }]
[[routes]]
pool = "backends"
''' + os.environ.get("AB_ROUTE_EXTRA", "") + '''
[admin]
addr = "127.0.0.1:19901"
[reload]
watch = false
''')
def wait(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError: time.sleep(0.05)
    raise SystemExit(f"port {port} not ready")
def ipis():
    """Rescheduling + function-call interrupts received so far by CPU 0."""
    n = 0
    for line in open("/proc/interrupts"):
        f = line.split()
        if f and f[0] in ("RES:", "CAL:"):
            n += int(f[1])
    return n
def idle0():
    """CPU 0's idle and total jiffies so far."""
    for line in open("/proc/stat"):
        f = line.split()
        if f[0] == "cpu0":
            v = [int(x) for x in f[1:]]
            return v[3], sum(v)
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) / TICK, int(f[12]) / TICK)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
be = subprocess.Popen(["taskset", "-c", "0", os.path.join(ROOT, "target/release/examples/upstream"),
                       "127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
for p in (18081, 18082, 18083): wait(p)
res = {n: [] for n, _, _ in variants}
try:
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for name, binary, env in order:
            lb = subprocess.Popen(["taskset", "-c", "1", binary, "--config", conf], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait(18080)
            url = f"http://127.0.0.1:18080{path}"
            if RATE:
                load = ["h2load", "--h1", "-t1", f"-c{conns}", f"--rps={max(1, RATE // conns)}", url]
                subprocess.run(["taskset", "-c", "0", *load[:-1], "-D2", url], capture_output=True, timeout=60)
                cmd = ["taskset", "-c", "0", *load[:-1], f"-D{dur}", url]
            else:
                subprocess.run(["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", "-d2", url], capture_output=True, timeout=60)
                cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{dur}", "--latency", url]
            u0, s0 = cpu(lb.pid); i0 = ipis(); d0 = idle0()
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=dur + 60).stdout
            u1, s1 = cpu(lb.pid); i1 = ipis(); d1 = idle0()
            lb.send_signal(signal.SIGTERM); lb.wait(timeout=30)
            if RATE:
                reqs = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
                rps = reqs / dur
                m = re.search(r"time for request:\s+[\d.]+\w+\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", out)
                def ms(v, unit):
                    return float(v) / 1000 if unit == "us" else float(v) * 1000 if unit == "s" else float(v)
                def lat(p):
                    return ms(m.group(3), m.group(4)) if p == 50 else ms(m.group(1), m.group(2))
            else:
                reqs = int(re.search(r"(\d+) requests in", out).group(1))
                rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
                def lat(p):
                    m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
                    v = float(m.group(1)); return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v
            us = ((u1 - u0) + (s1 - s0)) * 1e6 / reqs
            res[name].append((us, rps, lat(50), lat(99)))
            print(f"round {r+1} {name:16} {us:6.1f} us/req  {rps:9.0f} req/s  p50 {lat(50):7.2f} ms  p99 {lat(99):7.2f} ms  user {(u1-u0)*1e6/reqs:5.1f} sys {(s1-s0)*1e6/reqs:5.1f}  ipi {(i1-i0)/reqs:5.3f}  cpu0 idle {100*(d1[0]-d0[0])/max(1, d1[1]-d0[1]):4.1f}%", flush=True)
            time.sleep(1)
finally:
    be.terminate()
print("median (min-max) over rounds:")
for name, v in res.items():
    us = [x[0] for x in v]; rps = [x[1] for x in v]; p99 = [x[3] for x in v]; p50 = [x[2] for x in v]
    print(f"{name:16} {statistics.median(us):6.1f} us/req ({min(us):.1f}-{max(us):.1f})  {statistics.median(rps):8.0f} req/s  p50 {statistics.median(p50):.2f} ms  p99 {statistics.median(p99):.2f} ms ({min(p99):.1f}-{max(p99):.1f})")
