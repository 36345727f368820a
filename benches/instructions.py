#!/usr/bin/env python3
"""Instructions per proxied request, counted by valgrind's callgrind: a yardstick that does not move
with this VM's noise, for changes too small for a CPU-time A/B to see.

Usage: python3 benches/instructions.py [--connections C] [--rps R] [--cache] NAME=BINARY ...
e.g.   python3 benches/instructions.py before=/tmp/lb-before after=target/release/lb

For each build: three upstreams (examples/upstream.rs, built in release mode first), lb under
`valgrind --tool=callgrind`, and `h2load --h1` sending 16 requests a second on each of 64 keep-alive
connections for 15 s (a fixed rate valgrind's slowed lb keeps up with). Prints the instructions per
request of the threads lb starts, the runtime's worker among them (inclusive; start-up, on the main
thread, is left out), and keeps each profile for `callgrind_annotate`.
--connections and --rps change the load (64 connections at 16 requests a second each by default; --rps 0
is a closed loop, each connection sending its next request when the last is answered). With --cache,
callgrind also simulates this machine's per-core caches (32 KiB L1 data, 1 MiB L2 as its last level)
and the script prints the last level's read and write misses per request beside the instructions:
what a request costs in memory traffic once many connections' state no longer fits in cache, which
this VM's timings are too noisy to show.
Needs valgrind and h2load; all traffic stays on 127.0.0.1."""
import os, re, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORTS = (19201, 19202, 19203)
CONF = f'''[[listeners]]
addr = "127.0.0.1:19200"
[limits]
upstream_idle_per_server = 1024
[pools.backends]
strategy = "round_robin"
servers = [{", ".join(f'{{ name = "b{i}", addr = "127.0.0.1:{p}" }}' for i, p in enumerate(PORTS))}]
[[routes]]
pool = "backends"
[admin]
addr = "127.0.0.1:19209"
[reload]
watch = false
'''


def wait(port, limit=60.0):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} not ready")


CONNECTIONS, RPS, CACHE = 64, 16.0, False


def measure(name, binary, work):
    conf = os.path.join(work, "lb.toml")
    open(conf, "w").write(CONF)
    out = os.path.join(work, f"callgrind.{name}.out")
    env = dict(os.environ, LB_LOG="warn")
    sim = ["--cache-sim=yes", "--D1=32768,8,64", "--LL=1048576,16,64"] if CACHE else []
    lb = subprocess.Popen(["valgrind", "--tool=callgrind", *sim, f"--callgrind-out-file={out}", binary, "--config", conf],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(19200)
        rate = [f"--rps={RPS:g}"] if RPS else []
        run = subprocess.run(["h2load", "--h1", "-t1", f"-c{CONNECTIONS}", "-D", "15" if not CACHE else "30", *rate,
                              "http://127.0.0.1:19200/"], capture_output=True, text=True, timeout=300).stdout
    finally:
        lb.send_signal(2)
        lb.wait(timeout=120)
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", run).group(1))
    events = ["--show=Ir,DLmr,DLmw"] if CACHE else []
    report = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", *events, out],
                            capture_output=True, text=True).stdout
    # The threads lb starts (the runtime's worker among them; start-up runs on the main thread). Not
    # `worker::run` by name: whole-program LTO inlines it.
    cols = r"\s+([\d,]+)\s+\([^)]*\)\s+([\d,]+)\s+\([^)]*\)" if CACHE else ""
    rows = [[int(g.replace(",", "")) for g in m.groups()] for m in
            re.finditer(rf"^\s*([\d,]+)\s+\([^)]*\){cols}.*Thread>::new::thread_start \[", report, re.M)]
    worker = max(rows)
    misses = f", {worker[1] / done:6.1f} + {worker[2] / done:6.1f} last-level read + write misses" if CACHE else ""
    print(f"{name:12} {worker[0] / done:9.0f} instructions per request{misses} ({done} requests; profile {out})",
          flush=True)


work = tempfile.mkdtemp(prefix="lb-instructions-")
ups = subprocess.Popen([os.path.join(ROOT, "target/release/examples/upstream"), *(f"127.0.0.1:{p}" for p in PORTS)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for p in PORTS:
        wait(p)
    args = sys.argv[1:]
    while args and args[0].startswith("--"):
        flag = args.pop(0)
        if flag == "--cache":
            CACHE = True
        elif flag == "--connections":
            CONNECTIONS = int(args.pop(0))
        elif flag == "--rps":
            RPS = float(args.pop(0))
        else:
            sys.exit(f"unknown option {flag}")
    for arg in args:
        name, binary = arg.split("=", 1)
        measure(name, binary, work)
finally:
    ups.terminate()
