#!/usr/bin/env python3
"""What waking a process on another core costs on this machine: a pipe ping-pong between two
processes, 20,000 round trips, first across CPUs 1 and 0, then both on CPU 1. On a VM whose idle
vCPUs halt at once (no halt polling), every cross-core wake-up of an idle core is an
inter-processor interrupt through the hypervisor, and the sender pays for it in system time
(docs/performance.md, "Wake-up interrupts to the load generator's core").

Usage: python3 benches/ipi.py"""
import os, time

N = 20000


def run(child_cpu, parent_cpu):
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {child_cpu})
        for _ in range(N):
            os.read(r1, 1)
            os.write(w2, b"x")
        os._exit(0)
    os.sched_setaffinity(0, {parent_cpu})
    time.sleep(0.2)
    t0, c0 = time.time(), os.times()
    for _ in range(N):
        os.write(w1, b"x")
        os.read(r2, 1)
    t1, c1 = time.time(), os.times()
    os.waitpid(pid, 0)
    for fd in (r1, w1, r2, w2):
        os.close(fd)
    print(f"CPU {parent_cpu} <-> CPU {child_cpu}: round trip {(t1 - t0) / N * 1e6:.1f} us, "
          f"sender user {(c1.user - c0.user) / N * 1e6:.1f} us, system {(c1.system - c0.system) / N * 1e6:.1f} us per round trip")


run(0, 1)
run(1, 1)
