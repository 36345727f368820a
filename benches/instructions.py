#!/usr/bin/env python3
"""Instructions per proxied request, counted by valgrind's callgrind: a yardstick that does not move
with this VM's noise, for changes too small for a CPU-time A/B to see.

Usage: python3 benches/instructions.py NAME=BINARY ...
e.g.   python3 benches/instructions.py before=/tmp/lb-before after=target/release/lb

For each build: three upstreams (examples/upstream.rs, built in release mode first), lb under
`valgrind --tool=callgrind`, and `h2load --h1` sending 16 requests a second on each of 64 keep-alive
connections for 15 s (a fixed rate valgrind's slowed lb keeps up with). Prints the instructions per
request of the threads lb starts, the runtime's worker among them (inclusive; start-up, on the main
thread, is left out), and keeps each profile for `callgrind_annotate`.
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


def measure(name, binary, work):
    conf = os.path.join(work, "lb.toml")
    open(conf, "w").write(CONF)
    out = os.path.join(work, f"callgrind.{name}.out")
    env = dict(os.environ, LB_LOG="warn")
    lb = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary, "--config", conf],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(19200)
        run = subprocess.run(["h2load", "--h1", "-t1", "-c64", "-D", "15", "--rps=16", "http://127.0.0.1:19200/"],
                             capture_output=True, text=True, timeout=120).stdout
    finally:
        lb.send_signal(2)
        lb.wait(timeout=120)
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", run).group(1))
    report = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", out],
                            capture_output=True, text=True).stdout
    # The threads lb starts (the runtime's worker among them; start-up runs on the main thread). Not
    # `worker::run` by name: whole-program LTO inlines it.
    worker = max(int(m.group(1).replace(",", "")) for m in
                 re.finditer(r"^\s*([\d,]+).*Thread>::new::thread_start \[", report, re.M))
    print(f"{name:12} {worker / done:9.0f} instructions per request ({done} requests; profile {out})", flush=True)


work = tempfile.mkdtemp(prefix="lb-instructions-")
ups = subprocess.Popen([os.path.join(ROOT, "target/release/examples/upstream"), *(f"127.0.0.1:{p}" for p in PORTS)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for p in PORTS:
        wait(p)
    for arg in sys.argv[1:]:
        name, binary = arg.split("=", 1)
        measure(name, binary, work)
finally:
    ups.terminate()
