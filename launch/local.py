"""Runs `python -m detr_jax.main` as N cooperating CPU processes on this machine (127.0.0.1).

    python launch/local.py --num_processes=2 [--devices_per_process=2] \
        --config=configs/shapes_vanilla.py --workdir=/tmp/run [--config.total_steps=100 ...]

A multi-host rehearsal on one machine: every process gets `--coordinator_address=127.0.0.1:PORT`
(a free port), `--num_processes=N` and its `--process_id`, `JAX_PLATFORMS=cpu` and, with
`--devices_per_process=K`, K simulated CPU devices (`XLA_FLAGS=
--xla_force_host_platform_device_count=K`), so the mesh has N*K devices. CPU collectives between
the processes go through gloo (JAX's default). Every other argument goes to detr_jax.main.

Each process's output lines are printed prefixed with `[pI]`. SIGTERM and SIGINT are forwarded
to all processes (the children run in their own session, so a terminal's Ctrl-C reaches them only
once, through this script). When a process fails, the others cannot finish (their collectives
would wait for it); they are killed after `--grace_s` seconds. The exit status is the worst of the
children's: 0 when all exited 0, else the largest code (128 + N for a child killed by signal N).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(devices_per_process: int, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    env["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if devices_per_process > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    env["XLA_FLAGS"] = " ".join(flags)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _pump(proc: subprocess.Popen, prefix: str, lock: threading.Lock) -> None:
    for line in proc.stdout:
        with lock:
            sys.stdout.write(f"{prefix} {line}")
            sys.stdout.flush()


def exit_status(codes: list[int]) -> int:
    """The worst child status: 0 if all are 0, else the largest (signal N counts as 128 + N)."""
    return max((c if c >= 0 else 128 - c) for c in codes) if codes else 0


def launch(
    num_processes: int,
    devices_per_process: int,
    args: list[str],
    port: int = 0,
    grace_s: float = 30.0,
    module: str = "detr_jax.main",
) -> int:
    """Starts the processes, relays their output and signals; returns the worst exit status."""
    address = f"127.0.0.1:{port or free_port()}"
    env = child_env(devices_per_process)
    procs: list[subprocess.Popen] = []
    lock = threading.Lock()
    for i in range(num_processes):
        cmd = [sys.executable, "-m", module, *args, f"--coordinator_address={address}",
               f"--num_processes={num_processes}", f"--process_id={i}"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        procs.append(proc)
        print(f"[local] process {i} pid {proc.pid} coordinator {address}", flush=True)
    pumps = [threading.Thread(target=_pump, args=(p, f"[p{i}]", lock), daemon=True)
             for i, p in enumerate(procs)]
    for t in pumps:
        t.start()

    def forward(signum, frame):
        with lock:
            print(f"[local] forwarding {signal.Signals(signum).name}", flush=True)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        failed_at = None
        while any(p.poll() is None for p in procs):
            if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
                failed_at = time.time()
                print(f"[local] a process failed; killing the others in {grace_s:.0f} s",
                      flush=True)
            if failed_at is not None and time.time() - failed_at > grace_s:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for t in pumps:
        t.join(timeout=5)
    codes = [p.returncode for p in procs]
    print(f"[local] exit codes {codes}", flush=True)
    return exit_status(codes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=1)
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument("--grace_s", type=float, default=30.0,
                        help="after one process fails, seconds before the others are killed")
    parser.add_argument("--module", default="detr_jax.main", help=argparse.SUPPRESS)
    ours, rest = parser.parse_known_args(argv)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return launch(ours.num_processes, ours.devices_per_process, rest, ours.port, ours.grace_s,
                  ours.module)


if __name__ == "__main__":
    sys.exit(main())
