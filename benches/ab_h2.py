#!/usr/bin/env python3
"""Interleaved A/B of lb builds over HTTP/2 + TLS, for a change's before and after in one session.

Usage: python3 benches/ab_h2.py ROUNDS DURATION NAME=BINARY[:ENV=VAL;...] ...
e.g.   python3 benches/ab_h2.py 5 5 before=/tmp/lb-before after=target/release/lb

benches/load.py's TLS config (a self-signed ECDSA certificate, three upstreams from
examples/upstream.rs, built in release mode first): lb alone on CPU 1 with one worker, h2load
(32 connections x 8 streams, TLS 1.3, ALPN h2) and the upstreams on CPU 0; per round every build
once (order rotated), 2 s of warm-up, then DURATION seconds measured. Prints lb's CPU per request
(user + system from /proc) and req/s per run, then the median (min-max) per build.
All traffic stays on 127.0.0.1."""
import os, re, statistics, subprocess, sys, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load
rounds, dur = int(sys.argv[1]), int(sys.argv[2])
def minor_faults(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[7])
builds = []
for a in sys.argv[3:]:
    name, rest = a.split("=", 1)
    binary, _, envs = rest.partition(":")
    builds.append((name, binary, dict(kv.split("=", 1) for kv in filter(None, envs.split(";")))))
res = {n: [] for n, _, _ in builds}
up = subprocess.Popen(["taskset", "-c", "0", os.path.join(load.ROOT, "target/release/examples/upstream"), *load.UPSTREAMS], stdout=subprocess.PIPE)
up.stdout.readline()
try:
    with tempfile.TemporaryDirectory() as tmp:
        load.make_cert(tmp)
        cmd, env = load.lb_tls_config(tmp)
        env["TOKIO_WORKER_THREADS"] = "1"
        port = load.PORTS["lb-tls"]
        for r in range(rounds):
            order = builds[r % len(builds):] + builds[:r % len(builds)]
            for name, binary, extra in order:
                c = ["taskset", "-c", "1", binary] + cmd[1:]
                p = subprocess.Popen(c, env={**os.environ, **env, **extra}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    load.wait_port(port)
                    url = f"https://127.0.0.1:{port}/"
                    subprocess.run(["taskset", "-c", "0", "h2load", "-c", "32", "-m", "8", "-D", "2", url], capture_output=True)
                    pids = load.process_tree(p.pid)
                    before = load.cpu_seconds(pids)
                    faults = minor_faults(p.pid)
                    out = subprocess.run(["taskset", "-c", "0", "h2load", "-c", "32", "-m", "8", "-D", str(dur), url], capture_output=True, text=True).stdout
                    cpu = load.cpu_seconds(pids) - before
                    faults = minor_faults(p.pid) - faults
                    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
                    done = int(m.group(2))
                    us = cpu / done * 1e6
                    res[name].append(us)
                    print(f"round {r+1} {name:8} {us:6.1f} us/req  {done/dur:8.0f} req/s  {faults/done:5.2f} page faults/req", flush=True)
                finally:
                    p.terminate(); p.wait()
finally:
    up.terminate()
for n, v in res.items():
    print(f"{n:8} median {statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})")
