"""Check that ``--executor ray`` on a two-node cluster gives the arrays of a local run (issue #13).

Two commands:

  # compare two runs' features.h5 and matches.h5 array by array (exit 1 on any difference);
  # --subset: B's pairs may be a subset of A's (e.g. A also holds pairs of an earlier run)
  python benchmarks/ray_check.py compare LOCAL_OUT RAY_OUT [--subset]

  # start a two-node Ray cluster on the loopback address (head + one more node, CPUS each), run
  # COMMAND with --ray-address appended, optionally kill -9 one Ray worker process once the match
  # stage has been running for KILL_AFTER seconds, then stop the cluster (only its own processes)
  python benchmarks/ray_check.py loopback --cpus 2 --kill-after 20 --out OUT -- \
      omniglue-sfm reconstruct IMAGES OUT --preset aliked+lightglue --executor ray --ray-cpus-per-worker 2

Each node runs ``ray start --block`` in its own process session, so stopping the cluster signals
that session only (never ``ray stop``, which stops every Ray process of the machine).
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import psutil

ACTOR_TITLE = "ray::_ChunkActor"  # the process title Ray gives our workers (omniglue_sfm.runtime.executors)


# --------------------------------------------------------------------------------------------
# comparing outputs


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file by its path (root attributes, e.g. the config, left out)."""
    out: dict[str, np.ndarray] = {}

    def visit(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]

    with h5py.File(path, "r") as h5:
        h5.visititems(visit)
    return out


def compare_files(a: Path, b: Path, subset: bool = False) -> list[str]:
    """Problems found comparing ``b`` with ``a`` (empty: equal)."""
    x, y = h5_arrays(a), h5_arrays(b)
    problems = []
    missing = sorted(set(y) - set(x)) if subset else sorted(set(x) ^ set(y))
    if missing:
        problems.append(f"{len(missing)} dataset(s) in only one of the files, e.g. {missing[:3]}")
    common = sorted(set(x) & set(y))
    different = [k for k in common if not np.array_equal(x[k], y[k])]
    if different:
        problems.append(f"{len(different)} of {len(common)} dataset(s) differ, e.g. {different[:3]}")
    print(f"{b.name}: {len(common)} common dataset(s), {len(different)} different"
          + (f", {len(set(x) - set(y))} only in {a}" if subset else ""))
    return problems


def compare_runs(a: Path, b: Path, subset: bool = False) -> int:
    problems = compare_files(a / "features.h5", b / "features.h5")
    problems += compare_files(a / "matches.h5", b / "matches.h5", subset)
    for p in problems:
        print("DIFFERENT:", p)
    print("EQUAL" if not problems else "NOT EQUAL")
    return 0 if not problems else 1


# --------------------------------------------------------------------------------------------
# a two-node cluster on the loopback address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def loopback_env() -> dict[str, str]:
    """The environment of the loopback cluster's processes and of its drivers: no usage stats, and
    no token authentication (nothing outside this machine can reach the cluster's ports anyway)."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


@contextmanager
def loopback_cluster(cpus: int, nodes: int = 2, port: int | None = None) -> Iterator[str]:
    """``nodes`` Ray nodes on 127.0.0.1 with ``cpus`` CPUs each; yields the head's address."""
    port = port or free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--num-gpus", "0",
              "--disable-usage-stats"]
    env = loopback_env()
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen([_ray_cli(), "start", "--head", "--port", str(port),
                                       "--include-dashboard=false", *common], env=env,
                                      start_new_session=True))
        _wait_nodes(address, 1)
        for _ in range(nodes - 1):
            procs.append(subprocess.Popen([_ray_cli(), "start", "--address", address, *common], env=env,
                                          start_new_session=True))
        _wait_nodes(address, nodes)
        yield address
    finally:
        for p in reversed(procs):
            _stop_session(p)


def _wait_nodes(address: str, count: int, timeout: float = 120.0) -> None:
    """Until the cluster at ``address`` has ``count`` live nodes (checked in a subprocess)."""
    code = ("import ray, sys; ray.init(address=sys.argv[1], include_dashboard=False, "
            "configure_logging=False, log_to_driver=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True,
                             env=loopback_env())
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(2)
    raise TimeoutError(f"the Ray cluster at {address} did not reach {count} node(s) in {timeout:.0f} s")


def _stop_session(proc: subprocess.Popen) -> None:
    """Stop a ``ray start --block`` and everything in its session (SIGTERM, then SIGKILL)."""
    sid = proc.pid  # start_new_session: the session id is the leader's pid
    members = [p for p in psutil.process_iter() if _session(p) == sid]
    for p in members:
        _signal(p, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=15)
    for p in alive:
        _signal(p, signal.SIGKILL)
    proc.wait(timeout=15)


def _session(p: psutil.Process) -> int | None:
    try:
        return os.getsid(p.pid)
    except (ProcessLookupError, PermissionError):
        return None


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def actor_processes(sessions: Sequence[int] | None = None) -> list[psutil.Process]:
    """Our Ray worker processes (``_ChunkActor``), optionally only those in ``sessions``."""
    found = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith(ACTOR_TITLE) and (sessions is None or _session(p) in sessions):
            found.append(p)
    return found


def _flushed(out: Path) -> int:
    """Match shard files written so far (each holds finished pairs)."""
    parts = out / "matches.h5.parts"
    return sum(1 for _ in parts.glob("shard-*.h5")) if parts.exists() else 0


def kill_worker_mid_match(out: Path, after: float, stop: threading.Event, log: list[str]) -> None:
    """``after`` seconds after the match stage stored its first results (a shard file in
    ``OUT/matches.h5.parts``, which exists only while matching), kill -9 one worker process that is
    running a chunk; record it in ``log``. (The extract stage's actors are gone by then.)"""
    first_seen = None
    while not stop.is_set():
        flushed = _flushed(out)
        if flushed and first_seen is None:
            first_seen = time.monotonic()
        if first_seen is not None and time.monotonic() - first_seen >= after:
            running = [p for p in actor_processes()
                       if f"{ACTOR_TITLE}.run" in " ".join(p.info["cmdline"] or [])]
            if running:
                victim = running[-1]
                _signal(victim, signal.SIGKILL)
                log.append(f"killed Ray worker pid {victim.pid} ({ACTOR_TITLE}, running a chunk) mid-match, "
                           f"{flushed} match shard file(s) written before")
                return
        time.sleep(0.5)


def run_on_loopback(command: list[str], cpus: int, out: Path, kill_after: float | None) -> int:
    with loopback_cluster(cpus) as address:
        print(f"two-node Ray cluster at {address}", flush=True)
        stop, log = threading.Event(), []
        killer = None
        if kill_after is not None:
            killer = threading.Thread(target=kill_worker_mid_match, args=(out, kill_after, stop, log),
                                      daemon=True)
            killer.start()
        code = subprocess.run([*command, "--ray-address", address], env=loopback_env()).returncode
        stop.set()
        if killer is not None:
            killer.join()
        print("\n".join(log) if log else "no worker was killed", flush=True)
        if kill_after is not None and not log:
            print("the run ended before a worker could be killed", file=sys.stderr)
            return 1
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--subset", action="store_true", help="B's pairs may be a subset of A's")
    lb = sub.add_parser("loopback")
    lb.add_argument("--cpus", type=int, default=2, help="CPUs of each node")
    lb.add_argument("--kill-after", type=float, default=None, help="kill a worker this long into match")
    lb.add_argument("--out", type=Path, required=True, help="the command's output folder (watched)")
    lb.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.cmd == "compare":
        return compare_runs(args.a, args.b, args.subset)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return run_on_loopback(command, args.cpus, args.out, args.kill_after)


if __name__ == "__main__":
    sys.exit(main())
