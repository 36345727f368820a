#!/usr/bin/env python3
"""Writes a large lb config to stdout, for measuring what config size costs (docs/performance.md).

Usage: python3 benches/bigconfig.py --routes 10000 [--servers 3] [--pools 1] [--port 18090] > big.toml

N exact-host routes `h{i}.bench.test` spread over the pools, the last one for h{N-1}.bench.test;
servers are spread over the pools too, all at 127.0.0.1 from port 20000 up (nothing needs to
listen there: health checks are off). The admin listener is on 127.0.0.1:0 unless --admin is set.
"""
import argparse

ap = argparse.ArgumentParser()
ap.add_argument("--routes", type=int, default=1)
ap.add_argument("--servers", type=int, default=3)
ap.add_argument("--pools", type=int, default=1)
ap.add_argument("--port", type=int, default=18090)
ap.add_argument("--admin", default="127.0.0.1:0")
args = ap.parse_args()

out = [f'[[listeners]]\naddr = "127.0.0.1:{args.port}"\n', f'[admin]\naddr = "{args.admin}"\n']
for p in range(args.pools):
    servers = ",\n  ".join(f'{{ addr = "127.0.0.1:{20000 + s}" }}' for s in range(p, args.servers, args.pools))
    out.append(f'[pools.p{p}]\nservers = [\n  {servers},\n]\n')
for i in range(args.routes):
    out.append(f'[[routes]]\nhost = "h{i}.bench.test"\npool = "p{i % args.pools}"\n')
print("\n".join(out))
