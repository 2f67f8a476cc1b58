#!/usr/bin/env python3
"""CPU time spent by the PostgreSQL backends of one database, for bench/run.sh.

Polls pg_stat_activity for the database's backend pids and /proc/<pid>/stat for their CPU
time until SIGTERM, then prints the total in milliseconds. Backends that exit between polls
lose at most one poll interval of CPU; background processes (WAL writer, checkpointer,
autovacuum) are not counted. Unlike a whole-machine figure, this stays right while other
databases on the same server are busy.

    bench/pgcpu.py DATABASE_URL
"""
import os
import signal
import subprocess
import sys
import time

url = sys.argv[1]
tick = os.sysconf("SC_CLK_TCK")
last = {}  # pid -> (start time, cpu ticks): the start time tells a reused pid apart
stop = False


def handle(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, handle)


def pids():
    out = subprocess.run(
        ["psql", url, "-Atc",
         "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
         "AND pid <> pg_backend_pid()"],
        capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def sample():
    for pid in pids():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Fields after the command: utime and stime are the 12th and 13th, starttime the 20th.
        last[pid] = (fields[19], int(fields[11]) + int(fields[12]))


while not stop:
    sample()
    time.sleep(0.1)
print(sum(cpu for _, cpu in last.values()) * 1000 // tick)
