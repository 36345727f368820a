#!/usr/bin/env python3
"""Memory per idle client connection: lb against nginx and HAProxy, in one run.

Usage: python3 benches/idle.py [--connections 10000] [--tls-connections 2000] [--settle 2]

Builds lb and the benchmark upstream (examples/upstream.rs) in release mode and starts three upstream
servers, as benches/load.py does, with its equivalent configs (one worker each). For each proxy it
opens the connections, completes one GET on each (so the proxy holds a fully set-up keep-alive
connection), waits --settle seconds and reads the proxy's RSS (all its processes), then closes them.
Bytes per idle connection = (RSS with them open - RSS before) / connections. Three kinds:

  h1       plain HTTP/1.1 (--connections, 10,000 by default: the memory issue's bar)
  h1-tls   HTTP/1.1 over TLS 1.3 (--tls-connections)
  h2-tls   HTTP/2 over TLS 1.3, ALPN h2, one GET on stream 1 (--tls-connections)

The HTTP/2 client writes the preface, an empty SETTINGS frame and one HEADERS frame by hand (the
request is three static-table entries and a literal :authority) and reads frames until the response
ends: enough for a benchmark, nothing more. The file limit is raised to the hard limit for the client
and the proxies. nginx and HAProxy are optional (apt-get install nginx-light haproxy). All traffic stays
on 127.0.0.1; every socket operation has a timeout.
"""
import argparse
import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (the configs, the upstreams and the process helpers)

TIMEOUT = 10.0


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


def read_http1_answer(s):
    """Reads one HTTP/1.1 answer with a Content-Length body."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head.split(b"\r\n")[0].decode(errors="replace"))
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        body += chunk


def frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def h2_get(s, authority):
    """Preface, SETTINGS, GET / on stream 1; reads frames until stream 1 ends."""
    block = b"\x82\x87\x84" + b"\x01" + bytes([len(authority)]) + authority.encode()
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 0x5, 1, block))
    buf = b""
    while True:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the answer")
            buf += chunk
        length, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
        stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        buf = buf[9 + length:]
        if kind == 4 and not flags & 1:
            s.sendall(frame(4, 1, 0))  # SETTINGS ACK
        if stream == 1 and kind in (0, 1) and flags & 1:
            return


def open_idle(kind, port, n):
    ctx = None
    if kind != "h1":
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.set_alpn_protocols(["h2"] if kind == "h2-tls" else ["http/1.1"])
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        if ctx:
            s = ctx.wrap_socket(s)
        if kind == "h2-tls":
            h2_get(s, f"127.0.0.1:{port}")
        else:
            s.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            read_http1_answer(s)
        socks.append(s)
    return socks


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10000,
                    help="capped to what the file limit allows HAProxy (two descriptors per connection)")
    ap.add_argument("--tls-connections", type=int, default=2000)
    ap.add_argument("--settle", type=float, default=2.0)
    args = ap.parse_args()
    hard = raise_nofile()
    # HAProxy sizes its descriptor needs at two per allowed connection, and will not start above the
    # hard limit: 9,500 connections with Debian's 20,000 (the reference harness caps it the same way).
    cap = (hard - 400) // 2 - 300
    if args.connections > cap:
        print(f"the file limit ({hard}) allows {cap} connections, not {args.connections}", flush=True)
        args.connections = cap
    load.WORKERS = 1
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "lb", "--example", "upstream"],
                   cwd=load.ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="lb-idle-")
    load.make_cert(tmp)
    upstreams = [subprocess.Popen([os.path.join(load.ROOT, "target/release/examples/upstream"), a],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for a in load.UPSTREAMS]
    limit = args.connections + 300

    def lb_make(tls):
        def make(tmp):
            cmd, env = (load.lb_tls_config if tls else load.lb_config)(tmp)
            path = cmd[-1]
            conf = open(path).read()
            if "[limits]\n" in conf:
                conf = conf.replace("[limits]\n", f"[limits]\nmax_connections = {limit}\n", 1)
            else:
                conf += f"\n[limits]\nmax_connections = {limit}\n"
            with open(path, "w") as f:
                f.write(conf)
            return cmd, {**env, "TOKIO_WORKER_THREADS": "1"}
        return make

    def peer_make(base, kind):
        def make(tmp):
            cmd, env = base(tmp)
            path = cmd[cmd.index("-c" if kind == "nginx" else "-f") + 1]
            conf = open(path).read().replace("worker_connections 4096", f"worker_connections {limit * 2}") \
                .replace("maxconn 4096", f"maxconn {limit}")
            with open(path, "w") as f:
                f.write(conf)
            return cmd, env
        return make

    proxies = {"h1": [("lb", lb_make(False))], "h1-tls": [("lb-tls", lb_make(True))], "h2-tls": [("lb-tls", lb_make(True))]}
    for peer, plain, tls in [("nginx", load.nginx_config, load.nginx_tls_config),
                             ("haproxy", load.haproxy_config, load.haproxy_tls_config)]:
        if subprocess.run(["which", peer], capture_output=True).returncode == 0:
            proxies["h1"].append((peer, peer_make(plain, peer)))
            for kind in ("h1-tls", "h2-tls"):
                proxies[kind].append((f"{peer}-tls", peer_make(tls, peer)))
    rows = []
    try:
        for kind, n in [("h1", args.connections), ("h1-tls", args.tls_connections), ("h2-tls", args.tls_connections)]:
            for name, make in proxies[kind]:
                with load.running(name, make, tmp) as proc:
                    # One connection first: buffers and pools that exist once per process.
                    warm = open_idle(kind, load.PORTS[name], 1)
                    pids = load.process_tree(proc.pid)
                    before = rss_kb(pids)
                    start = time.time()
                    socks = open_idle(kind, load.PORTS[name], n)
                    opened = time.time() - start
                    time.sleep(args.settle)
                    during = rss_kb(load.process_tree(proc.pid))
                    per = (during - before) * 1024 / n
                    rows.append((kind, name.removesuffix("-tls"), n, before / 1024, during / 1024, per))
                    print(f"{kind:7} {name:12} {n:6} connections in {opened:5.1f}s  RSS {before / 1024:7.1f} -> "
                          f"{during / 1024:7.1f} MiB  {per:8,.0f} bytes per idle connection", flush=True)
                    for s in socks + warm:
                        s.close()
    finally:
        for u in upstreams:
            u.terminate()
    print("\n| connections | proxy | count | RSS before MiB | RSS with them idle MiB | bytes per idle connection |")
    print("|---|---|---|---|---|---|")
    for kind, name, n, b, d, per in rows:
        print(f"| {kind} | {name} | {n:,} | {b:.1f} | {d:.1f} | {per:,.0f} |")


if __name__ == "__main__":
    main()
