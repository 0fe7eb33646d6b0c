#!/usr/bin/env python3
"""Side-by-side transfer benchmark: haul against socat, nc, rsync, scp and the
classroom Python peers, on loopback, receiving into tmpfs.

Run it through bench/run (which makes sure python3 is there first).
See docs/BENCHMARKS.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import getpass
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEERS_DIR = REPO / 'tests' / 'peers'
SEED_MANY = REPO / 'bench' / 'seed_many.py'
PAGE = os.sysconf('SC_PAGE_SIZE')
GIB = 1 << 30
MIB = 1 << 20

ALL_PEERS = ['socat', 'nc', 'rsync', 'scp', 'seed-py', 'haul-seed', 'haul', 'haul-secret',
             'rsync-pull', 'scp-pull', 'haul-get']
ALL_SCENARIOS = ['large', 'small', 'one-client', 'concurrent', 'download-large', 'download-small']
# A name on the command line that stands for several scenarios.
SCENARIO_ALIASES = {'download': ['download-large', 'download-small']}
DEFAULT_SCENARIOS = 'large,small,one-client,concurrent,download'
# The scenarios whose data is the small-files tree (rates in files/s).
TREE_SCENARIOS = ('small', 'download-small')
# The download scenarios: a server holds the data and a client fetches it into
# an empty directory. Only the fetching peers run in them, beside an upload of
# the same data with haul's protocol (`haul`, measured interleaved with them,
# so that a download and an upload are compared under the same load); the
# fetching peers run nowhere else. The order is the order of the rows.
DOWNLOAD_SCENARIOS = ('download-large', 'download-small')
DOWNLOAD_PEERS = ['rsync-pull', 'scp-pull', 'haul', 'haul-get', 'haul-base', 'haul-get-base']
PULL_PEERS = {'rsync-pull', 'scp-pull', 'haul-get', 'haul-get-base'}


def peers_in(scen: str, names: list[str]) -> list[str]:
    """The peers among `names` that run in scenario `scen`, in table order."""
    if scen in DOWNLOAD_SCENARIOS:
        return [n for n in DOWNLOAD_PEERS if n in names]
    return [n for n in names if n not in PULL_PEERS]


PEER_HELP = {
    'socat': 'socat -b 1048576 -u, one TCP stream (tar piped for many files)',
    'nc': 'OpenBSD netcat (nc -N / nc -l), one TCP stream (tar piped for many files)',
    'rsync': 'rsync -r to a private rsync daemon (rsync://) on loopback',
    'scp': 'scp (-r) -c aes128-gcm@openssh.com through a private sshd on loopback',
    'seed-py': 'tests/peers/seed_client.py -> tests/peers/seed_server.py (classroom protocol)',
    'haul-seed': 'haul send --protocol seed -> haul serve (one connection per file)',
    'haul': 'haul send --protocol haul -> haul serve (directories sent whole)',
    'haul-secret': 'as haul, with a shared secret (--token-file): authenticated, encrypted '
                   '(Noise, AES-256-GCM)',
    'rsync-pull': 'download: rsync -r rsync://127.0.0.1:P/bench/PATH DIR/ from a private, '
                  'read-only rsync daemon',
    'scp-pull': 'download: scp (-r) -c aes128-gcm@openssh.com user@127.0.0.1:PATH DIR/ '
                'through a private sshd',
    'haul-get': 'download: haul get --from ADDR PATH --into DIR <- haul serve --allow-get',
    'haul-seed-base': 'as haul-seed, with the --base-haul binary',
    'haul-base': 'as haul, with the --base-haul binary',
    'haul-get-base': 'as haul-get, with the --base-haul binary',
}

# ---------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    m = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*', str(text), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f'not a size: {text!r} (try 1G, 64M, 16K, 4096)')
    mult = {'': 1, 'k': 1 << 10, 'm': 1 << 20, 'g': 1 << 30, 't': 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def human(n: float) -> str:
    for unit, size in (('GiB', GIB), ('MiB', MIB), ('KiB', 1024)):
        if n >= size:
            v = n / size
            return f'{v:.0f} {unit}' if v == int(v) else f'{v:.1f} {unit}'
    return f'{int(n)} B'


def free_ports(count: int) -> list[int]:
    """Ask the kernel for `count` distinct free loopback ports (for peers that
    cannot bind port 0 and report it). All are held until all are chosen: the
    kernel may hand out a port again once it is released, and two listeners
    given one port made a concurrent run fail. They are released before the
    peers bind them."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def listening_ports() -> set[int]:
    """Ports with a LISTEN socket on 127.0.0.1 (or 0.0.0.0), from /proc/net/tcp."""
    ports = set()
    with open('/proc/net/tcp') as f:
        next(f)
        for line in f:
            parts = line.split()
            local, state = parts[1], parts[3]
            if state != '0A':
                continue
            ip, port = local.split(':')
            if ip in ('0100007F', '00000000'):
                ports.add(int(port, 16))
    return ports


def tree_pids(root: int) -> list[int]:
    """root and all its live descendants (via /proc/PID/task/TID/children)."""
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        try:
            for tid in os.listdir(f'/proc/{pid}/task'):
                try:
                    with open(f'/proc/{pid}/task/{tid}/children') as f:
                        stack.extend(int(x) for x in f.read().split())
                except OSError:
                    pass
        except OSError:
            pass
    return out


def rss_of(pid: int) -> int:
    try:
        with open(f'/proc/{pid}/statm') as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


CLK_TCK = os.sysconf('SC_CLK_TCK')


def machine_busy_seconds() -> float:
    """CPU seconds spent busy so far by the whole machine (all cores), /proc/stat."""
    with open('/proc/stat') as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ... Without
    # CONFIG_IRQ_TIME_ACCOUNTING, softirq ticks (loopback TCP) are also charged
    # to the running process's stime; with it they are charged to no process,
    # and a busy transfer shows up as a little "other load".
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / CLK_TCK


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def wait_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (at most max_wait s) until processes other than this harness use
    less than `threshold` cores; return the background cores last seen."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, o0, t0 = machine_busy_seconds(), own_cpu_seconds(), time.monotonic()
        time.sleep(0.3)
        b1, o1, t1 = machine_busy_seconds(), own_cpu_seconds(), time.monotonic()
        bg = max(0.0, (b1 - b0) - (o1 - o0)) / (t1 - t0)
        if bg < threshold or time.monotonic() >= deadline:
            return bg
        time.sleep(1.0)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            chunk = f.read(4 * MIB)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# process handling: every process is started in its own session (pgid == pid)
# and stopped by that PID; cleanup() stops whatever is still running.


class Proc:
    registry: list['Proc'] = []

    # GNU time, when present, wraps every measured command. A process forked
    # from this Python harness inherits the harness's RSS high-water mark in its
    # ru_maxrss (it survives exec), so wait4 alone would report >= ~30 MiB for
    # everything; /usr/bin/time is small, and it reports its child's own peak.
    time_bin: str | None = None
    time_dir: Path | None = None
    nice = 0
    seq = 0

    def __init__(self, argv, *, cwd=None, stdin=subprocess.DEVNULL, stdout=None,
                 stderr=None, env=None, shell=False, measured=True):
        self.argv = argv
        self.time_out = None
        real = ['/bin/bash', '-c', argv] if shell else list(map(str, argv))
        if measured and Proc.time_bin:
            Proc.seq += 1
            self.time_out = Proc.time_dir / f'time-{Proc.seq}.txt'
            real = [Proc.time_bin, '-o', str(self.time_out), '-f', '%M'] + real
        self.popen = subprocess.Popen(
            real, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr, env=env,
            start_new_session=True)
        self.pid = self.popen.pid
        if Proc.nice:
            # Each process leads its own session, hence (with the kernel's
            # autogroup scheduling) its own task group, where a plain nice value
            # only ranks it against its own threads: set the group's nice too.
            try:
                with open(f'/proc/{self.pid}/autogroup', 'w') as f:
                    f.write(str(Proc.nice))
            except OSError:
                pass
        self.rusage = None
        self.exitcode = None
        self.side = ''  # 'send' or 'recv', for a Run's per-side sums
        Proc.registry.append(self)

    @property
    def done(self) -> bool:
        return self.exitcode is not None

    def reap(self) -> int:
        """Block until the process exits; keep its rusage (which includes the
        children it reaped itself)."""
        if self.exitcode is None:
            while True:
                try:
                    _, status, ru = os.wait4(self.pid, 0)
                    break
                except InterruptedError:
                    continue
            self.rusage = ru
            self.exitcode = os.waitstatus_to_exitcode(status)
            self.popen.returncode = self.exitcode
        return self.exitcode

    def poll(self) -> bool:
        if self.exitcode is None:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self.rusage = ru
                self.exitcode = os.waitstatus_to_exitcode(status)
                self.popen.returncode = self.exitcode
        return self.done

    def signal_group(self, sig) -> None:
        if self.exitcode is None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process (and the group it leads), SIGKILL after grace."""
        if self.done:
            return
        if self.time_out:
            # Signal the command, not the time wrapper, so that the wrapper
            # survives to reap it and report its peak RSS.
            for pid in self.direct_children():
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        else:
            self.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while not self.poll():
            if time.monotonic() > deadline:
                self.signal_group(signal.SIGKILL)
                self.reap()
                break
            time.sleep(0.01)
        # Members of the group it led that outlived it (e.g. the tar of a
        # pipeline whose shell was killed). While any member lives, the group
        # ID cannot be reused, so it still names only our processes.
        if group_members(self.pid):
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def cpu(self) -> float:
        if self.rusage is None:
            return 0.0
        return self.rusage.ru_utime + self.rusage.ru_stime

    def direct_children(self) -> set[int]:
        kids = set()
        try:
            for tid in os.listdir(f'/proc/{self.pid}/task'):
                with open(f'/proc/{self.pid}/task/{tid}/children') as f:
                    kids.update(int(x) for x in f.read().split())
        except OSError:
            pass
        return kids

    def maxrss(self) -> int:
        """Peak RSS of the command (max over it and the children it reaped)."""
        if self.time_out:
            try:
                lines = self.time_out.read_text().split()
                return int(lines[-1]) * 1024
            except (OSError, ValueError, IndexError):
                return 0
        return 0 if self.rusage is None else self.rusage.ru_maxrss * 1024


def live_groups() -> set[int]:
    """Process-group IDs of all live processes."""
    groups = set()
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                groups.add(int(f.read().rsplit(')', 1)[1].split()[2]))
        except (OSError, IndexError, ValueError):
            pass
    return groups


def group_members(pgid: int) -> bool:
    return pgid in live_groups()


def cleanup_processes() -> None:
    for p in reversed(Proc.registry):
        try:
            p.stop(grace=2.0)
        except ChildProcessError:
            pass
    # Groups we created whose leader is gone but some member is not: while a
    # member lives its group ID cannot be reused, so it names only our processes.
    ours = {p.pid for p in Proc.registry}
    for pgid in ours & live_groups():
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class RssSampler(threading.Thread):
    """Samples the summed RSS of the sender-side and receiver-side process trees."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval = interval
        self.sides: dict[str, list[tuple[int, bool]]] = {'send': [], 'recv': []}
        self.peak = {'send': 0, 'recv': 0}
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def add(self, side: str, pid: int, skip_root: bool) -> None:
        with self.lock:
            self.sides[side].append((pid, skip_root))

    def sample(self) -> None:
        with self.lock:
            sides = {k: list(v) for k, v in self.sides.items()}
        for side, roots in sides.items():
            total = 0
            for root, skip_root in roots:
                for pid in tree_pids(root)[1 if skip_root else 0:]:
                    total += rss_of(pid)
            self.peak[side] = max(self.peak[side], total)

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(self.interval)

    def stop(self) -> None:
        self.halt.set()
        self.join()


# ---------------------------------------------------------------------------
# data sets


@dataclasses.dataclass
class DataSet:
    scenario: str
    root: Path              # directory holding the files (sent whole for dir peers)
    files: list[str]        # names relative to root (flat)
    sizes: dict[str, int]
    hashes: dict[str, str]
    # Download scenarios: the directory a server shares, and the paths under
    # it that a client asks for (the file, or the folder `root` itself).
    served: Path | None = None
    fetch: list[str] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    @property
    def tree(self) -> bool:
        """The small-files tree (sent as a folder where a peer can), not single files."""
        return self.scenario in TREE_SCENARIOS


def write_random(path: Path, size: int) -> None:
    with open(path, 'wb') as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(os.urandom(n))
            left -= n


def make_dataset(scenario: str, base: Path, args) -> DataSet:
    # The download scenarios' data has the same shape as the large-file and
    # small-files scenarios' (one file; a folder of files), under a directory
    # of its own that the servers share.
    root = base / {'large': 'large', 'small': 'files', 'one-client': 'one-client',
                   'concurrent': 'clients', 'download-large': 'served-large',
                   'download-small': 'served-small/files'}[scenario]
    root.mkdir(parents=True)
    if scenario in ('large', 'download-large'):
        specs = [('big.bin', args.large_size)]
    elif scenario in TREE_SCENARIOS:
        specs = [(f'f{i:05d}.bin', args.small_size) for i in range(args.small_count)]
    elif scenario == 'one-client':
        specs = [('c000.bin', args.client_size)]
    else:
        specs = [(f'c{i:03d}.bin', args.client_size) for i in range(args.clients)]
    sizes, hashes = {}, {}
    for name, size in specs:
        write_random(root / name, size)
        sizes[name] = size
        hashes[name] = sha256_file(root / name)
    data = DataSet(scenario, root, [n for n, _ in specs], sizes, hashes)
    if scenario == 'download-large':
        data.served, data.fetch = root, ['big.bin']
    elif scenario == 'download-small':
        # The folder is asked for by name, so it lands as DIR/files/...
        data.served, data.fetch = root.parent, [root.name]
    return data


def verify(dst: Path, data: DataSet, names: list[str], strip_suffix: str = '') -> list[str]:
    """Every file in `names` must be somewhere under dst (any layout: peers put a
    directory level or not) with the same size and SHA-256, and nothing else may
    be there. Returns a list of problems."""
    found: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(dst):
        dirnames[:] = [d for d in dirnames if d != '.haul']
        for fn in filenames:
            key = fn[:-len(strip_suffix)] if strip_suffix and fn.endswith(strip_suffix) else fn
            found.setdefault(key, []).append(Path(dirpath) / fn)
    problems = []
    for name in names:
        paths = found.pop(name, [])
        if not paths:
            problems.append(f'{name}: missing')
            continue
        if len(paths) > 1:
            problems.append(f'{name}: received {len(paths)} times')
        p = paths[0]
        size = p.stat().st_size
        if size != data.sizes[name]:
            problems.append(f'{name}: size {size}, expected {data.sizes[name]}')
        elif sha256_file(p) != data.hashes[name]:
            problems.append(f'{name}: content differs (sha256)')
    for name, paths in found.items():
        problems.append(f'unexpected file {paths[0]}')
    # A .haul staging area must be empty after a complete run.
    for dirpath, dirnames, filenames in os.walk(dst):
        if Path(dirpath).name == '.haul' and filenames:
            problems.append(f'{dirpath}: {len(filenames)} leftover staging file(s)')
    return problems


# ---------------------------------------------------------------------------
# peers


class PeerUnavailable(Exception):
    pass


class RunFailed(Exception):
    pass


def wait_listening(ports: list[int], procs: list[Proc], timeout: float = 15.0) -> None:
    want = set(ports)
    deadline = time.monotonic() + timeout
    while True:
        if want <= listening_ports():
            return
        for p in procs:
            if p.poll():
                raise RunFailed(f'{p.argv if isinstance(p.argv, str) else p.argv[0]} exited '
                                f'with {p.exitcode} before listening')
        if time.monotonic() > deadline:
            raise RunFailed(f'nothing listening on {sorted(want - listening_ports())[:5]} after {timeout}s')
        time.sleep(0.005)


def wait_no_children(proc: Proc, timeout: float = 15.0) -> None:
    """Let a forking server finish its per-connection children (so that their CPU
    is reaped into the server's rusage) before it is stopped."""
    deadline = time.monotonic() + timeout
    server_and_wrapper = 2 if proc.time_out else 1
    while len(tree_pids(proc.pid)) > server_and_wrapper and time.monotonic() < deadline:
        time.sleep(0.01)


def read_listen_line(proc: Proc, timeout: float = 15.0) -> str:
    """First stdout line `listening on ADDR:PORT` -> 'ADDR:PORT'."""
    result: dict[str, str] = {}

    def reader():
        result['line'] = proc.popen.stdout.readline().decode(errors='replace')

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    line = result.get('line', '')
    m = re.match(r'listening on (\S+)', line)
    if not m:
        raise RunFailed(f'{proc.argv[0]}: expected "listening on ADDR:PORT", got {line!r}')
    return m.group(1)


class Peer:
    name = ''
    concurrent_native = False

    def __init__(self, ctx: 'Context'):
        self.ctx = ctx

    def check(self) -> None:
        """Raise PeerUnavailable if the peer cannot run."""

    def setup(self) -> None:
        """Once per benchmark run (keys etc.)."""

    # start(data, dst, run) starts the peer's processes in `run`, around
    # run.start_clock() and run.stop_clock(); run_case verifies dst after.
    def small_names(self, data: DataSet) -> list[str]:
        return data.files

    def log_path(self, what: str) -> Path:
        self.ctx.log_seq += 1
        return self.ctx.logs / f'{self.ctx.log_seq:04d}-{self.name}-{what}.log'

    def logf(self, what: str):
        return open(self.log_path(what), 'wb')


class StreamPeer(Peer):
    """socat and nc: a one-shot listener per stream, raw bytes (tar for a tree)."""

    def recv_cmd(self, port: int, out: str) -> str:
        raise NotImplementedError

    def send_cmd(self, port: int, src: str) -> str:
        raise NotImplementedError

    def start(self, data: DataSet, dst: Path, run: 'Run') -> None:
        q = shlex.quote
        if data.tree:
            streams = [(f'tar -C {q(str(data.root))} -cf - .', f'tar -C {q(str(dst))} -xf -')]
        else:
            streams = [(f'< {q(str(data.root / n))}', f'> {q(str(dst / n))}') for n in data.files]
        ports = free_ports(len(streams))
        recvs = []
        for port, (_, sink) in zip(ports, streams):
            if sink.startswith('tar'):
                cmd = f'set -o pipefail; {self.recv_cmd(port)} | {sink}'
            else:
                cmd = f'exec {self.recv_cmd(port)} {sink}'
            recvs.append(run.receiver(cmd, shell=True, stderr=self.ctx.shared_log))
        wait_listening(ports, recvs)
        run.start_clock()
        for port, (source, _) in zip(ports, streams):
            if source.startswith('tar'):
                cmd = f'set -o pipefail; {source} | {self.send_cmd(port)}'
            else:
                cmd = f'exec {self.send_cmd(port)} {source}'
            run.sender(cmd, shell=True, stderr=self.ctx.shared_log)
        run.wait_clients()
        run.wait_servers_exit()
        run.stop_clock()


class Socat(StreamPeer):
    name = 'socat'

    def check(self):
        if not shutil.which('socat'):
            raise PeerUnavailable('socat not installed')

    def recv_cmd(self, port):
        return f'socat -b 1048576 -u TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr STDOUT'

    def send_cmd(self, port):
        return f'socat -b 1048576 -u STDIN TCP:127.0.0.1:{port}'


class Nc(StreamPeer):
    name = 'nc'

    def check(self):
        if not shutil.which('nc.openbsd'):
            raise PeerUnavailable('nc.openbsd (package netcat-openbsd) not installed')

    def recv_cmd(self, port):
        return f'nc.openbsd -l 127.0.0.1 {port} < /dev/null'

    def send_cmd(self, port):
        return f'nc.openbsd -N 127.0.0.1 {port}'


class Rsync(Peer):
    name = 'rsync'

    def check(self):
        if not shutil.which('rsync'):
            raise PeerUnavailable('rsync not installed')

    def daemon(self, run, path: Path, read_only: bool, start) -> tuple[Proc, str]:
        """A private rsync daemon on a free port whose module `bench` is `path`,
        started with `start` (run.receiver or run.source); returns it and the
        module's URL."""
        port = free_port()
        conf = self.ctx.tmp / f'rsyncd-{port}.conf'
        ids = ''
        if os.geteuid() == 0:
            ids = 'uid = root\ngid = root\n'
        conf.write_text(
            'use chroot = no\nmax connections = 0\n' + ids +
            f'log file = {self.ctx.logs}/rsyncd.log\n'
            f'[bench]\n  path = {path}\n  read only = {"yes" if read_only else "no"}\n')
        d = start(['rsync', '--daemon', '--no-detach', f'--config={conf}',
                   '--address=127.0.0.1', f'--port={port}'], stderr=self.ctx.shared_log)
        wait_listening([port], [d])
        return d, f'rsync://127.0.0.1:{port}/bench/'

    def start(self, data, dst, run):
        d, url = self.daemon(run, dst, False, run.receiver)
        run.start_clock()
        if data.tree:
            run.sender(['rsync', '-r', str(data.root), url], stderr=self.ctx.shared_log)
        else:
            for n in data.files:
                run.sender(['rsync', '-r', str(data.root / n), url], stderr=self.ctx.shared_log)
        run.wait_clients()
        run.stop_clock()
        wait_no_children(d)


class RsyncPull(Rsync):
    """A download: the client pulls from a read-only daemon that shares the data."""
    name = 'rsync-pull'

    def start(self, data, dst, run):
        d, url = self.daemon(run, data.served, True, run.source)
        run.start_clock()
        run.fetcher(['rsync', '-r'] + [url + path for path in data.fetch] + [f'{dst}/'],
                    stderr=self.ctx.shared_log)
        run.wait_clients()
        run.stop_clock()
        wait_no_children(d)


class Scp(Peer):
    name = 'scp'

    def check(self):
        for tool in ('scp', 'ssh', 'ssh-keygen'):
            if not shutil.which(tool):
                raise PeerUnavailable(f'{tool} not installed (openssh-client)')
        if not Path('/usr/sbin/sshd').exists():
            raise PeerUnavailable('/usr/sbin/sshd not installed (openssh-server)')

    def setup(self):
        d = self.ctx.tmp / f'ssh-{self.name}'
        d.mkdir(mode=0o700)
        self.dir = d
        for key in ('host_key', 'client_key'):
            subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', str(d / key)],
                           check=True, stdin=subprocess.DEVNULL)
        (d / 'authorized_keys').write_text((d / 'client_key.pub').read_text())
        # sshd refuses to start without its privilege-separation directory.
        Path('/run/sshd').mkdir(mode=0o755, exist_ok=True)
        self.user = getpass.getuser()

    def sshd(self, run, start) -> tuple[Proc, list[str]]:
        """A private sshd on a free port, started with `start` (run.receiver or
        run.source); returns it and the scp command line that reaches it."""
        port = free_port()
        conf = self.dir / f'sshd-{port}.conf'
        conf.write_text('\n'.join([
            f'Port {port}', 'ListenAddress 127.0.0.1',
            f'HostKey {self.dir}/host_key',
            f'AuthorizedKeysFile {self.dir}/authorized_keys',
            'PidFile none', 'UsePAM no', 'PasswordAuthentication no',
            'KbdInteractiveAuthentication no', 'PubkeyAuthentication yes',
            'PermitRootLogin prohibit-password', 'StrictModes no', 'UseDNS no',
            'Subsystem sftp internal-sftp', 'MaxStartups 1000', 'MaxSessions 1000',
            'LogLevel ERROR', '']))
        d = start(['/usr/sbin/sshd', '-D', '-e', '-f', str(conf)], stderr=self.ctx.shared_log)
        wait_listening([port], [d])
        base = ['scp', '-q', '-F', '/dev/null', '-c', 'aes128-gcm@openssh.com',
                '-i', str(self.dir / 'client_key'), '-P', str(port),
                '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
                '-o', 'BatchMode=yes', '-o', 'IdentitiesOnly=yes', '-o', 'LogLevel=ERROR']
        return d, base

    def start(self, data, dst, run):
        d, base = self.sshd(run, run.receiver)
        target = f'{self.user}@127.0.0.1:{dst}/'
        run.start_clock()
        if data.tree:
            run.sender(base + ['-r', str(data.root), target], stderr=self.ctx.shared_log)
        else:
            for n in data.files:
                run.sender(base + [str(data.root / n), target], stderr=self.ctx.shared_log)
        run.wait_clients()
        run.stop_clock()
        wait_no_children(d)


class ScpPull(Scp):
    """A download: scp copies from the sshd's side into the local directory."""
    name = 'scp-pull'

    def start(self, data, dst, run):
        d, base = self.sshd(run, run.source)
        sources = [f'{self.user}@127.0.0.1:{data.served / path}' for path in data.fetch]
        run.start_clock()
        run.fetcher(base + (['-r'] if data.tree else []) + sources + [f'{dst}/'],
                    stderr=self.ctx.shared_log)
        run.wait_clients()
        run.stop_clock()
        wait_no_children(d)


class SeedPy(Peer):
    name = 'seed-py'

    def check(self):
        for f in ('seed_server.py', 'seed_client.py'):
            if not (PEERS_DIR / f).exists():
                raise PeerUnavailable(f'{PEERS_DIR / f} missing')

    def start(self, data, dst, run):
        srv = run.receiver([sys.executable, '-u', str(PEERS_DIR / 'seed_server.py'), '127.0.0.1', '0'],
                           cwd=dst, stdout=subprocess.PIPE, stderr=self.ctx.shared_log)
        addr = read_listen_line(srv)
        ip, port = addr.rsplit(':', 1)
        expected = len(data.files)
        stored = threading.Semaphore(0)

        def reader():
            for line in srv.popen.stdout:
                if line.startswith(b'stored '):
                    stored.release()
        threading.Thread(target=reader, daemon=True).start()
        run.start_clock()
        if data.tree:
            run.sender([sys.executable, str(SEED_MANY), ip, port] + data.files,
                       cwd=data.root, stderr=self.ctx.shared_log)
        else:
            for n in data.files:
                run.sender([sys.executable, str(PEERS_DIR / 'seed_client.py'), n, ip, port],
                           cwd=data.root, stderr=self.ctx.shared_log)
        run.wait_clients()
        # The classroom client does not wait for the server: wait for `stored`.
        deadline = time.monotonic() + self.ctx.args.timeout
        for _ in range(expected):
            if not stored.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise RunFailed('seed_server.py did not report every file stored')
        run.stop_clock()

    strip_suffix = '.temp'


_HAUL_STATE: list[str] = []


def haul_env() -> dict:
    """The environment for haul processes: without HAUL_TOKEN, so that the
    haul and haul-seed peers stay unauthenticated whatever the caller's shell
    holds, and haul-secret uses only the secret it passes with --token-file;
    with a state directory of the run's own (removed at exit), so that the
    sender identity `haul send` keeps goes nowhere near the caller's home."""
    if not _HAUL_STATE:
        state = tempfile.mkdtemp(prefix='haul-bench-state-')
        atexit.register(shutil.rmtree, state, ignore_errors=True)
        _HAUL_STATE.append(state)
    env = dict(os.environ)
    env.pop('HAUL_TOKEN', None)
    env['XDG_STATE_HOME'] = _HAUL_STATE[0]
    return env


class HaulSeed(Peer):
    name = 'haul-seed'
    protocol = 'seed'
    # Extra arguments for `haul serve` and `haul send` (the secret, for haul-secret).
    secret_args: list[str] = []

    @property
    def binary(self) -> str | None:
        return self.ctx.haul

    def check(self):
        if not self.binary or not Path(self.binary).exists():
            raise PeerUnavailable('haul binary not built')

    def small_names(self, data):
        cap = self.ctx.args.haul_seed_small_max
        return data.files if cap <= 0 else data.files[:cap]

    def serve(self, dst, run, start=None, extra: tuple[str, ...] = ()) -> str:
        """`haul serve` on port 0 for `dir`, started with `start` (by default
        run.receiver); returns the address it says it listens on."""
        start = start or run.receiver
        srv = start([self.binary, 'serve', '--listen', '127.0.0.1:0', '--dir', str(dst), *extra]
                    + self.secret_args,
                    stdout=subprocess.PIPE, stderr=self.logf('serve'), env=haul_env())
        return read_listen_line(srv)

    def send_argv(self, addr: str) -> list[str]:
        return [self.binary, 'send', '--protocol', self.protocol, '--to', addr] + self.secret_args

    def start(self, data, dst, run):
        addr = self.serve(dst, run)
        send = self.send_argv(addr)
        log = self.log_path('send')
        run.start_clock()
        if data.tree:
            run.sender(send + self.small_names(data), cwd=data.root, stderr=open(log, 'ab'),
                       env=haul_env())
        else:
            for n in data.files:
                run.sender(send + [n], cwd=data.root, stderr=open(log, 'ab'), env=haul_env())
        run.wait_clients()
        run.stop_clock()


class HaulProto(HaulSeed):
    name = 'haul'
    protocol = 'haul'

    def check(self):
        super().check()
        # Probe: does this binary accept --protocol haul at all? (Port 9 on
        # loopback, a file that does not exist: nothing is sent anywhere.)
        r = subprocess.run([self.binary, 'send', '--protocol', 'haul', '--to', '127.0.0.1:9',
                            '/nonexistent/haul-bench-probe'],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30, env=haul_env())
        err = r.stderr.decode(errors='replace')
        if r.returncode == 2 and ('invalid value' in err or 'possible values' in err):
            raise PeerUnavailable('not available: this haul binary rejects --protocol haul')

    def small_names(self, data):
        return data.files

    def start(self, data, dst, run):
        addr = self.serve(dst, run)
        send = self.send_argv(addr)
        log = self.log_path('send')
        run.start_clock()
        if data.tree:
            run.sender(send + [str(data.root)], stderr=open(log, 'ab'), env=haul_env())
        else:
            for n in data.files:
                run.sender(send + [n], cwd=data.root, stderr=open(log, 'ab'), env=haul_env())
        run.wait_clients()
        run.stop_clock()


class HaulSecret(HaulProto):
    """haul's protocol with a shared secret: the session is authenticated and
    encrypted (Noise, AES-256-GCM). One secret per benchmark run, made by
    `haul token`, handed to server and clients with --token-file."""
    name = 'haul-secret'

    def setup(self):
        super().setup()
        token = self.ctx.tmp / 'token'
        with open(token, 'wb') as out:
            os.fchmod(out.fileno(), 0o600)
            r = subprocess.run([self.binary, 'token'], stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.PIPE, timeout=30, env=haul_env())
        if r.returncode != 0:
            err = r.stderr.decode(errors='replace').strip().splitlines()
            raise PeerUnavailable(f'not available: `haul token` failed (exit {r.returncode}'
                                  f'{": " + err[-1] if err else ""})')
        if not re.fullmatch(r'[0-9a-f]{64}\n?', token.read_text()):
            raise PeerUnavailable('not available: `haul token` did not print 64 hex characters')
        self.secret_args = ['--token-file', str(token)]


class HaulGet(HaulProto):
    """A download: `haul get` fetches the file, or the folder whole, from a
    `haul serve --allow-get` that shares the data."""
    name = 'haul-get'

    def check(self):
        super().check()
        r = subprocess.run([self.binary, 'get', '--help'], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30, env=haul_env())
        if r.returncode != 0:
            raise PeerUnavailable('not available: this haul binary has no `get` command')

    def start(self, data, dst, run):
        addr = self.serve(data.served, run, run.source, ('--allow-get',))
        log = self.log_path('get')
        run.start_clock()
        # --quiet: only failures are printed, and they go to the log.
        run.fetcher([self.binary, 'get', '--from', addr, *data.fetch, '--into', str(dst), '--quiet']
                    + self.secret_args,
                    stdout=open(log, 'ab'), stderr=open(log, 'ab'), env=haul_env())
        run.wait_clients()
        run.stop_clock()


class BaseBinary:
    """The same peer run with the --base-haul binary: another build,
    interleaved with this one's in the same run, so that the two are
    compared under the same load."""

    @property
    def binary(self) -> str | None:
        return self.ctx.args.base_haul


class HaulSeedBase(BaseBinary, HaulSeed):
    name = 'haul-seed-base'


class HaulProtoBase(BaseBinary, HaulProto):
    name = 'haul-base'


class HaulGetBase(BaseBinary, HaulGet):
    name = 'haul-get-base'


BASE_PEERS = ['haul-seed-base', 'haul-base', 'haul-get-base']

PEER_CLASSES = {c.name: c for c in (Socat, Nc, Rsync, RsyncPull, Scp, ScpPull, SeedPy, HaulSeed,
                                    HaulProto, HaulSecret, HaulGet, HaulSeedBase, HaulProtoBase,
                                    HaulGetBase)}


# ---------------------------------------------------------------------------
# one measured run


class Run:
    """One measured run. Its processes are clients (waited for; every one must
    exit 0) and servers (stopped by PID at the end), each on one side: `send`,
    where the data comes from, or `recv`, where it lands. An upload has sending
    clients and receiving servers, a download the other way round."""

    def __init__(self, ctx, sampler_interval):
        self.ctx = ctx
        self.clients: list[Proc] = []
        self.servers: list[Proc] = []
        self.sampler = RssSampler(sampler_interval)
        self.t0 = self.t1 = None
        self.timed_out = False
        self.timer = threading.Timer(ctx.args.timeout, self._timeout)
        self.timer.daemon = True
        self.timer.start()
        self.sampler.start()
        self.busy0, self.own0, self.mono0 = machine_busy_seconds(), own_cpu_seconds(), time.monotonic()
        self.background = 0.0

    def _timeout(self):
        self.timed_out = True
        for p in self.clients + self.servers:
            p.signal_group(signal.SIGKILL)

    def _start(self, argv, side: str, group: list, **kw) -> Proc:
        p = Proc(argv, **kw)
        p.side = side
        group.append(p)
        self.sampler.add(side, p.pid, bool(p.time_out))
        return p

    def receiver(self, argv, **kw) -> Proc:
        """A server that receives (an upload's)."""
        return self._start(argv, 'recv', self.servers, **kw)

    def sender(self, argv, **kw) -> Proc:
        """A client that sends (an upload's)."""
        return self._start(argv, 'send', self.clients, **kw)

    def source(self, argv, **kw) -> Proc:
        """A server that sends (a download's)."""
        return self._start(argv, 'send', self.servers, **kw)

    def fetcher(self, argv, **kw) -> Proc:
        """A client that receives (a download's)."""
        return self._start(argv, 'recv', self.clients, **kw)

    def start_clock(self):
        self.t0 = time.monotonic()

    def stop_clock(self):
        self.t1 = time.monotonic()

    def wait_clients(self):
        for p in self.clients:
            p.reap()

    def wait_servers_exit(self):
        for p in self.servers:
            p.reap()

    def finish(self):
        """Stop the servers (by PID), collect rusage; raise on any failure."""
        for p in self.servers:
            if not p.done:
                p.stop()
        self.timer.cancel()
        self.sampler.stop()
        # Other load on the machine while this run was going: everything the
        # machine spent busy, less the measured processes and this harness.
        busy = machine_busy_seconds() - self.busy0
        ours = sum(p.cpu() for p in self.clients + self.servers) + own_cpu_seconds() - self.own0
        self.background = max(0.0, busy - ours) / max(1e-9, time.monotonic() - self.mono0)
        if self.timed_out:
            raise RunFailed(f'timed out after {self.ctx.args.timeout}s')
        bad = [p for p in self.clients if p.exitcode != 0]
        if bad:
            raise RunFailed(f'{len(bad)} client(s) failed, e.g. exit {bad[0].exitcode}: '
                            f'{bad[0].argv if isinstance(bad[0].argv, str) else " ".join(map(str, bad[0].argv[:6]))}')

    def abort(self):
        self.timer.cancel()
        for p in self.clients + self.servers:
            p.stop(grace=2.0)
        self.sampler.stop()

    def metrics(self) -> dict:
        def side(key):
            # The processes of one side run at the same time (one per stream
            # or per client), so their peaks add up; the sampler catches
            # forking servers' per-connection children, which wait4 only
            # reports as a maximum.
            procs = [p for p in self.clients + self.servers if p.side == key]
            cpu = sum(p.cpu() for p in procs)
            rss = max(self.sampler.peak[key], sum(p.maxrss() for p in procs))
            return cpu, rss
        cpu_s, rss_s = side('send')
        cpu_r, rss_r = side('recv')
        return {'wall': self.t1 - self.t0, 'cpu_send': cpu_s, 'cpu_recv': cpu_r,
                'rss_send': rss_s, 'rss_recv': rss_r, 'background_cores': self.background}


class Context:
    def __init__(self, args, tmp: Path):
        self.args = args
        self.tmp = tmp
        self.logs = tmp / 'logs'
        self.logs.mkdir()
        self.shared_log = open(self.logs / 'peers-stderr.log', 'ab')
        self.log_seq = 0
        self.haul: str | None = None


def run_case(ctx: Context, peer: Peer, data: DataSet) -> dict:
    dst = Path(tempfile.mkdtemp(prefix=f'recv-{peer.name}-', dir=ctx.tmp))
    names = peer.small_names(data) if data.tree else data.files
    interval = 0.05 if data.scenario == 'concurrent' else 0.02
    run = Run(ctx, interval)
    try:
        peer.start(data, dst, run)
        run.finish()
    except BaseException:
        run.abort()
        shutil.rmtree(dst, ignore_errors=True)
        raise
    m = run.metrics()
    problems = verify(dst, data, names, getattr(peer, 'strip_suffix', ''))
    shutil.rmtree(dst, ignore_errors=True)
    if problems:
        raise RunFailed('VERIFY FAILED: ' + '; '.join(problems[:5]) +
                        (f' (+{len(problems) - 5} more)' if len(problems) > 5 else ''))
    m['files'] = len(names)
    m['bytes'] = sum(data.sizes[n] for n in names)
    return m


# ---------------------------------------------------------------------------
# environment: installs, build, machine


APT_FOR = {'socat': ['socat'], 'nc': ['netcat-openbsd'], 'rsync': ['rsync'],
           'scp': ['openssh-server', 'openssh-client']}


def ensure_packages(peers: list[str], ctx: Context) -> None:
    missing = []
    if 'socat' in peers and not shutil.which('socat'):
        missing += APT_FOR['socat']
    if 'nc' in peers and not shutil.which('nc.openbsd'):
        missing += APT_FOR['nc']
    if {'rsync', 'rsync-pull'} & set(peers) and not shutil.which('rsync'):
        missing += APT_FOR['rsync']
    if ({'scp', 'scp-pull'} & set(peers)
            and not (Path('/usr/sbin/sshd').exists() and shutil.which('scp'))):
        missing += APT_FOR['scp']
    if not shutil.which('tar'):
        missing.append('tar')
    if not Path('/usr/bin/time').exists():
        missing.append('time')
    if not missing:
        return
    if ctx.args.no_install:
        log(f'missing packages (not installing, --no-install): {" ".join(missing)}')
        return
    if os.geteuid() != 0 or not shutil.which('apt-get'):
        log(f'missing packages and cannot apt-get install them: {" ".join(missing)}')
        return
    log(f'installing with apt-get: {" ".join(missing)}')
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    with open(ctx.logs / 'apt.log', 'ab') as out:
        subprocess.run(['apt-get', 'update', '-qq'], env=env, stdout=out, stderr=out,
                       stdin=subprocess.DEVNULL)
        r = subprocess.run(['apt-get', 'install', '-y', '-qq', '--no-install-recommends'] + missing,
                           env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        log(f'apt-get install failed (see {ctx.logs}/apt.log); the peers needing it are skipped')


def build_haul(ctx: Context) -> str | None:
    args = ctx.args
    if args.haul:
        return args.haul
    target = Path(os.environ.get('CARGO_TARGET_DIR', REPO / 'target'))
    binary = target / 'release' / 'haul'
    if args.no_build:
        return str(binary) if binary.exists() else None
    if not shutil.which('cargo'):
        log('cargo not found: haul peers are skipped')
        return None
    log(f'building haul: cargo build --release (target dir {target})')
    r = subprocess.run(['cargo', 'build', '--release', '--quiet'], cwd=REPO,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        log('cargo build --release failed: haul peers are skipped')
        return None
    return str(binary)


def machine_info() -> dict:
    info = {'nproc': os.cpu_count(), 'kernel': platform.release(),
            'loadavg': ' '.join(f'{x:.2f}' for x in os.getloadavg())}
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                info['cpu'] = line.split(':', 1)[1].strip()
                break
        for line in open('/proc/meminfo'):
            if line.startswith('MemTotal'):
                info['mem_gib'] = round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    return info


def versions(haul: str | None, built: bool, base: str | None) -> dict:
    def first(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
            text = (r.stdout + r.stderr).decode(errors='replace').strip().splitlines()
            return text[0] if text else ''
        except (OSError, subprocess.TimeoutExpired):
            return ''
    v = {}
    if shutil.which('socat'):
        for line in subprocess.run(['socat', '-V'], capture_output=True).stdout.decode().splitlines():
            if line.startswith('socat version'):
                v['socat'] = line.split(' on ')[0]
    if shutil.which('rsync'):
        v['rsync'] = first(['rsync', '--version'])
    if shutil.which('ssh'):
        v['ssh'] = first(['ssh', '-V'])
    if shutil.which('dpkg-query'):
        r = subprocess.run(['dpkg-query', '-W', '-f=${Version}', 'netcat-openbsd'], capture_output=True)
        if r.returncode == 0:
            v['nc'] = 'netcat-openbsd ' + r.stdout.decode()
    v['python'] = platform.python_version()
    if haul:
        v['haul'] = first([haul, '--version'])
        if not built:
            v['haul'] += ' (the --haul binary)'
        r = subprocess.run(['git', '-C', str(REPO), 'rev-parse', '--short', 'HEAD'], capture_output=True)
        if built and r.returncode == 0:
            dirty = subprocess.run(['git', '-C', str(REPO), 'status', '--porcelain', '--', 'src', 'Cargo.toml'],
                                   capture_output=True).stdout.strip()
            v['haul'] += f' (git {r.stdout.decode().strip()}{"+dirty" if dirty else ""})'
    if base:
        v['haul-base'] = f'{first([base, "--version"])} (the --base-haul binary)'
    return v


def tmpfs_base(args, cleanups: list) -> Path:
    """A directory on tmpfs for sources and receive directories."""
    base = Path(args.workdir)
    fs = ''
    if base.is_dir():
        r = subprocess.run(['stat', '-f', '-c', '%T', str(base)], capture_output=True)
        fs = r.stdout.decode().strip()
    if fs == 'tmpfs':
        return base
    if os.geteuid() != 0:
        sys.exit(f'{base} is not tmpfs ({fs or "missing"}) and only root can mount one; pass --workdir')
    mnt = Path(tempfile.mkdtemp(prefix='haul-bench-tmpfs-'))
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=50%', 'tmpfs', str(mnt)], check=True)
    cleanups.append(lambda: (subprocess.run(['umount', str(mnt)]), mnt.rmdir()))
    log(f'{base} is not tmpfs: mounted a tmpfs at {mnt}')
    return mnt


# ---------------------------------------------------------------------------
# report


def fmt_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    right = [i > 0 for i in range(len(headers))]

    def line(cells):
        return '| ' + ' | '.join(c.rjust(w) if right[i] else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + ' |'
    sep = '|' + '|'.join(('-' * (w + 1) + ':') if right[i] else ('-' * (w + 2))
                         for i, w in enumerate(widths)) + '|'
    return '\n'.join([line(headers), sep] + [line(r) for r in rows])


SCEN_TITLE = {
    'large': lambda a: f'One large file ({human(a.large_size)})',
    'small': lambda a: f'Many small files ({a.small_count} x {human(a.small_size)})',
    'one-client': lambda a: f'One client alone ({human(a.client_size)}, the concurrent clients\' baseline)',
    'concurrent': lambda a: f'Concurrent clients ({a.clients} clients x {human(a.client_size)}, one file each)',
    'download-large': lambda a: f'Download: one large file ({human(a.large_size)})',
    'download-small': lambda a: f'Download: many small files ({a.small_count} x {human(a.small_size)})',
}

# The columns "x PEER": time per byte relative to that peer's median in the
# same table. A download is set against rsync's pull and against haul's own
# upload of the same data.
RATIO_REFS = {'download-large': ['rsync-pull', 'haul'], 'download-small': ['rsync-pull', 'haul']}
# Row labels where the peer name alone would mislead.
ROW_LABEL = {('download-large', 'haul'): 'haul (send)', ('download-small', 'haul'): 'haul (send)',
             ('download-large', 'haul-base'): 'haul-base (send)',
             ('download-small', 'haul-base'): 'haul-base (send)'}


def median_rate(runs: list[dict]) -> float:
    """Bytes per second of the median run."""
    return runs[0]['bytes'] / statistics.median(r['wall'] for r in runs)


def summarize(results: dict, unavailable: dict, failures: dict, args) -> str:
    out = []
    for scen in args.scenarios:
        names = peers_in(scen, args.peers)
        if not names:
            continue
        out.append(f'### {SCEN_TITLE[scen](args)}\n')
        med = {}
        for peer in names:
            runs = results.get((scen, peer), [])
            if runs:
                med[peer] = {k: statistics.median(r[k] for r in runs)
                             for k in ('wall', 'cpu_send', 'cpu_recv', 'rss_send', 'rss_recv')}
                med[peer]['files'] = runs[0]['files']
                med[peer]['bytes'] = runs[0]['bytes']
                med[peer]['n'] = len(runs)
                med[peer]['min'] = min(r['wall'] for r in runs)
                med[peer]['max'] = max(r['wall'] for r in runs)

        def per_unit(m):  # seconds per byte: fair also when a peer ran a subset
            return m['wall'] / m['bytes']

        rate_head = 'files/s' if scen in TREE_SCENARIOS else 'GiB/s'
        refs = RATIO_REFS.get(scen, ['socat', 'rsync'])
        headers = ['peer', 'wall s (median)', 'min-max s', rate_head, 'CPU s/GiB',
                   'send RSS MiB', 'recv RSS MiB']
        headers += [f'x {ROW_LABEL.get((scen, ref), ref)}' for ref in refs]
        # The concurrent clients' aggregate throughput against one client's,
        # the same peer's in this run: alone with the same file, and with
        # the large file.
        baselines = [b for b in ('one-client', 'large') if scen == 'concurrent' and b in args.scenarios]
        headers += [f'aggregate / {b}' for b in baselines]
        rows, notes = [], []
        if scen in DOWNLOAD_SCENARIOS and 'haul' in names:
            notes.append('haul (send): the same data uploaded (haul send -> haul serve), '
                         'interleaved with the downloads, for comparison; send RSS is the '
                         'server\'s in the download rows, the client\'s in this one')
        for peer in names:
            label = ROW_LABEL.get((scen, peer), peer)
            if peer in unavailable:
                rows.append([label, 'n/a'] + [''] * (len(headers) - 2))
                notes.append(f'{peer}: {unavailable[peer]}')
                continue
            if peer not in med:
                why = failures.get((scen, peer), 'no successful run')
                rows.append([label, 'FAILED'] + [''] * (len(headers) - 2))
                notes.append(f'{peer}: {why}')
                continue
            m = med[peer]
            if scen in TREE_SCENARIOS:
                rate = f'{m["files"] / m["wall"]:.0f}'
            else:
                rate = f'{m["bytes"] / GIB / m["wall"]:.2f}'
            cpu = (m['cpu_send'] + m['cpu_recv']) / (m['bytes'] / GIB)
            ratios = []
            for ref in refs:
                ratios.append(f'{per_unit(m) / per_unit(med[ref]):.2f}' if ref in med else '-')
            for b in baselines:
                alone = results.get((b, peer), [])
                ratios.append(f'{median_rate(results[(scen, peer)]) / median_rate(alone):.2f}'
                              if alone else '-')
            if scen in TREE_SCENARIOS and m['files'] != args.small_count:
                label += ' *'
                notes.append(f'{peer}: * timed on the first {m["files"]} of the {args.small_count} files '
                             f'(see --haul-seed-small-max); files/s and ratios are per file')
            if m['n'] < args.reps:
                notes.append(f'{peer}: only {m["n"]} of {args.reps} repetitions succeeded '
                             f'({failures.get((scen, peer), "")})')
            rows.append([label, f'{m["wall"]:.3f}', f'{m["min"]:.2f}-{m["max"]:.2f}', rate, f'{cpu:.2f}',
                         f'{m["rss_send"] / MIB:.1f}', f'{m["rss_recv"] / MIB:.1f}'] + ratios)
        out.append(fmt_table(headers, rows))
        bgs = [r['background_cores'] for peer in names for r in results.get((scen, peer), [])]
        if bgs:
            busy = sum(1 for b in bgs if b >= 0.25)
            notes.append(f'other load on the machine during these runs: median {statistics.median(bgs):.2f} '
                         f'cores, max {max(bgs):.2f}; {busy} of {len(bgs)} runs saw 0.25 cores or more')
        if notes:
            out.append('')
            out.extend(f'- {n}' for n in notes)
        out.append('')
    return '\n'.join(out)


# ---------------------------------------------------------------------------


def parse_args(argv):
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog='bench/run',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Side-by-side loopback benchmark of haul against socat, nc, rsync, scp and '
                    'the classroom Python peers. Builds haul (cargo build --release), installs '
                    'missing peers with apt-get, moves data only over 127.0.0.1 into tmpfs, '
                    'verifies every received file by SHA-256 and prints medians.',
        epilog='Peers:\n' + '\n'.join(f'  {k:<14} {v}' for k, v in PEER_HELP.items()) + '''

Scenarios (repetitions are interleaved: for each scenario, for rep 1..N, for each peer):
  large       one large file
  small       many small files (tar | socat/nc, rsync -r, scp -r, one connection per
              file for the seed peers, the whole directory for haul and haul-secret)
  one-client  one client alone with one file of the concurrent clients' size: the
              baseline the concurrent clients' aggregate is compared with
  concurrent  N clients at once, one file each (one process per client); its table
              also gives the aggregate throughput over each peer's own one-client
              and large-file throughput in the same run (1.00 or more: the crowd
              moves bytes at least as fast as a lone client)
  download    both of: download-large, the large file, and download-small, the
              small-files tree (data of the same sizes as large and small), each
              fetched from a server into an empty directory by haul get
              (<- haul serve --allow-get), rsync-pull (from a read-only rsync
              daemon) and scp-pull (through sshd), beside haul's upload of the same
              data (the haul peer, the row "haul (send)"); the fetching peers
              run only here, and only they and haul (and --base-haul's) run here

Every size/count flag also reads an environment variable (shown in brackets).
Sizes take K/M/G suffixes (binary). CARGO_TARGET_DIR is honoured for the build.

Examples:
  bench/run --quick                    about a minute
  bench/run                            full default run (well under 15 min on 2 cores)
  bench/run --peers socat,haul-seed --scenarios large --large-size 4G
  bench/run --quick --scenarios download     the download scenario alone
  bench/run --markdown /tmp/bench.md --json /tmp/bench.json
''')
    p.add_argument('--quick', action='store_true',
                   help='64M large file, 500 x 16K small files, 8 clients x 4M, 1 rep '
                        '(explicit flags still win)')
    p.add_argument('--reps', type=int, default=None, help='repetitions [BENCH_REPS] (default 3)')
    p.add_argument('--large-size', type=parse_size, default=None,
                   help='size of the large file [BENCH_LARGE_SIZE] (default 1G)')
    p.add_argument('--small-count', type=int, default=None,
                   help='number of small files [BENCH_SMALL_COUNT] (default 5000)')
    p.add_argument('--small-size', type=parse_size, default=None,
                   help='size of each small file [BENCH_SMALL_SIZE] (default 16K)')
    p.add_argument('--clients', type=int, default=None,
                   help='concurrent clients [BENCH_CLIENTS] (default 50)')
    p.add_argument('--client-size', type=parse_size, default=None,
                   help='file size per concurrent client [BENCH_CLIENT_SIZE] (default 20M)')
    p.add_argument('--haul-seed-small-max', type=int, default=None,
                   help='haul-seed times only the first N small files, because its server waits '
                        'on every connection for the header to settle (about 10 ms on loopback); '
                        '0 = all '
                        '[BENCH_HAUL_SEED_SMALL_MAX] (default 100, --quick 25)')
    p.add_argument('--peers', default=env('BENCH_PEERS', ','.join(ALL_PEERS)),
                   help='comma-separated peers [BENCH_PEERS] (default all: %(default)s)')
    p.add_argument('--scenarios', default=env('BENCH_SCENARIOS', DEFAULT_SCENARIOS),
                   help='comma-separated scenarios [BENCH_SCENARIOS] (default %(default)s)')
    p.add_argument('--workdir', default=env('BENCH_WORKDIR', '/dev/shm'),
                   help='tmpfs directory for sources and receive dirs [BENCH_WORKDIR] '
                        '(default /dev/shm; if not tmpfs and root, a private tmpfs is mounted)')
    p.add_argument('--timeout', type=float, default=float(env('BENCH_TIMEOUT', '600')),
                   help='seconds before one run is killed and counted as failed (default 600)')
    p.add_argument('--idle-wait', type=float, default=None,
                   help='before each run wait up to this many seconds for other processes to use '
                        '< 0.25 cores (0 = do not wait) [BENCH_IDLE_WAIT] (default 30, --quick 1); '
                        'the other load seen during each run is reported either way')
    p.add_argument('--nice', type=int, default=int(env('BENCH_NICE', '0')),
                   help='run the measured processes at this nice value, e.g. -10 on a machine '
                        'shared with builds (negative needs root) [BENCH_NICE] (default 0)')
    p.add_argument('--haul', help='use this haul binary instead of building one')
    p.add_argument('--base-haul', help='another haul binary (an absolute path), run as the peers '
                   'haul-base and haul-seed-base, interleaved with this build\'s, to compare two builds '
                   'in one run')
    p.add_argument('--no-build', action='store_true', help='do not run cargo build')
    p.add_argument('--no-install', action='store_true', help='never apt-get install missing peers')
    p.add_argument('--markdown', help='also write the result tables (markdown) to this file')
    p.add_argument('--json', help='also write every raw measurement (JSON) to this file')
    p.add_argument('--keep', action='store_true', help='keep the temp dir (logs) after the run')
    a = p.parse_args(argv)

    quick = {'idle_wait': 1.0, 'reps': 1, 'large_size': 64 * MIB, 'small_count': 500, 'small_size': 16 * 1024,
             'clients': 8, 'client_size': 4 * MIB, 'haul_seed_small_max': 25}
    full = {'idle_wait': 30.0, 'reps': 3, 'large_size': GIB, 'small_count': 5000, 'small_size': 16 * 1024,
            'clients': 50, 'client_size': 20 * MIB, 'haul_seed_small_max': 100}
    conv = {'idle_wait': float, 'reps': int, 'small_count': int, 'clients': int, 'haul_seed_small_max': int,
            'large_size': parse_size, 'small_size': parse_size, 'client_size': parse_size}
    for key, default in (quick if a.quick else full).items():
        if getattr(a, key) is None:
            e = env('BENCH_' + key.upper())
            setattr(a, key, conv[key](e) if e is not None and not a.quick else default)
    a.peers = [x.strip() for x in a.peers.split(',') if x.strip()]
    scenarios = []
    for x in (x.strip() for x in a.scenarios.split(',')):
        for y in SCENARIO_ALIASES.get(x, [x] if x else []):
            if y not in scenarios:
                scenarios.append(y)
    a.scenarios = scenarios
    for x in a.peers:
        if x in BASE_PEERS and not a.base_haul:
            p.error(f'peer {x!r} needs --base-haul BIN')
        if x not in ALL_PEERS + BASE_PEERS:
            p.error(f'unknown peer {x!r}; choose from {",".join(ALL_PEERS + BASE_PEERS)}')
    if a.base_haul and not os.path.isabs(a.base_haul):
        p.error('--base-haul needs an absolute path')
    for x in a.scenarios:
        if x not in ALL_SCENARIOS:
            p.error(f'unknown scenario {x!r}; choose from '
                    f'{",".join(ALL_SCENARIOS + list(SCENARIO_ALIASES))}')
    if a.reps < 1 or a.small_count < 1 or a.clients < 1:
        p.error('--reps, --small-count and --clients must be at least 1')
    return a


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cleanups: list = []

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f'signal {signum}')
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    base = tmpfs_base(args, cleanups)
    tmp = Path(tempfile.mkdtemp(prefix='haul-bench-', dir=base))
    ctx = Context(args, tmp)
    status = 0
    try:
        size_of = {'large': args.large_size, 'small': args.small_count * args.small_size,
                   'one-client': args.client_size, 'concurrent': args.clients * args.client_size,
                   'download-large': args.large_size,
                   'download-small': args.small_count * args.small_size}
        need = sum(size_of[s] for s in args.scenarios)
        peak = max(size_of[s] for s in args.scenarios)
        st = os.statvfs(tmp)
        if st.f_bavail * st.f_frsize < 2 * peak + 64 * MIB:
            sys.exit(f'{base} has {human(st.f_bavail * st.f_frsize)} free; this run needs about '
                     f'{human(2 * peak + 64 * MIB)}')
        # The peers that run in at least one of the chosen scenarios.
        active = [n for n in args.peers if any(n in peers_in(s, args.peers) for s in args.scenarios)]
        ensure_packages(active, ctx)
        if Path('/usr/bin/time').exists():
            Proc.time_bin, Proc.time_dir = '/usr/bin/time', ctx.logs
        else:
            log('/usr/bin/time (package time) is missing: peak RSS falls back to wait4, which '
                'includes the harness\'s own ~30 MiB; the sampled per-tree RSS is still shown')
        if any(p.startswith('haul') for p in active):
            ctx.haul = build_haul(ctx)
        if args.nice:
            # After the build: every measured process inherits this priority.
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
            Proc.nice = args.nice
            log(f'running the measured processes at nice {os.getpriority(os.PRIO_PROCESS, 0)}')

        peers: list[Peer] = []
        unavailable: dict[str, str] = {}
        for name in active:
            peer = PEER_CLASSES[name](ctx)
            try:
                peer.check()
                peer.setup()
                peers.append(peer)
            except (PeerUnavailable, subprocess.SubprocessError, OSError) as e:
                msg = str(e)
                unavailable[name] = msg if msg.startswith('not available') else f'not available: {msg}'
                log(f'{name}: {unavailable[name]}')

        info = machine_info()
        vers = versions(ctx.haul, not ctx.args.haul, ctx.args.base_haul)
        log(f'machine: {info}')
        log(f'work dir (tmpfs): {tmp}; {len(args.scenarios)} scenario(s), {args.reps} rep(s), '
            f'data {human(need)} in total')

        results: dict = {}
        failures: dict = {}
        raw = []
        by_name = {peer.name: peer for peer in peers}
        for scen in args.scenarios:
            scen_peers = [by_name[n] for n in peers_in(scen, args.peers) if n in by_name]
            if not scen_peers:
                log(f'== {SCEN_TITLE[scen](args)}: no peer to run')
                continue
            log(f'== {SCEN_TITLE[scen](args)}: generating data')
            data = make_dataset(scen, tmp / 'src', args)
            for rep in range(1, args.reps + 1):
                for peer in scen_peers:
                    label = f'[{scen} rep {rep}/{args.reps}] {peer.name:<11}'
                    if args.idle_wait > 0:
                        bg = wait_quiet(args.idle_wait)
                        if bg >= 0.25:
                            log(f'{label} machine still busy ({bg:.2f} other cores) after '
                                f'{args.idle_wait:.0f}s; running anyway')
                    try:
                        m = run_case(ctx, peer, data)
                    except RunFailed as e:
                        status = 1
                        failures[(scen, peer.name)] = str(e)
                        log(f'{label} FAILED: {e}')
                        raw.append({'scenario': scen, 'rep': rep, 'peer': peer.name, 'error': str(e)})
                        continue
                    results.setdefault((scen, peer.name), []).append(m)
                    raw.append({'scenario': scen, 'rep': rep, 'peer': peer.name, **m})
                    rate = (f'{m["files"] / m["wall"]:8.0f} files/s' if scen in TREE_SCENARIOS
                            else f'{m["bytes"] / GIB / m["wall"]:8.2f} GiB/s')
                    log(f'{label} {m["wall"]:8.3f} s {rate}  cpu {m["cpu_send"]:.2f}+{m["cpu_recv"]:.2f} s'
                        f'  rss {m["rss_send"] / MIB:.0f}/{m["rss_recv"] / MIB:.0f} MiB'
                        f'  other load {m["background_cores"]:.2f} cores  verified')
            shutil.rmtree(tmp / 'src')

        table = summarize(results, unavailable, failures, args)
        header = (f'haul benchmark — {time.strftime("%Y-%m-%d %H:%M %Z")}; '
                  f'{info.get("nproc")} x {info.get("cpu", "?")}, {info.get("mem_gib", "?")} GiB RAM, '
                  f'Linux {info.get("kernel")}; load average before the run {info.get("loadavg")}, '
                  f'after {" ".join(f"{x:.2f}" for x in os.getloadavg())}; nice {args.nice}; '
                  f'{args.reps} rep(s), medians; '
                  'loopback 127.0.0.1, receive dir on tmpfs\n\n'
                  + '\n'.join(f'- {k}: {v}' for k, v in vers.items()) + '\n')
        legend = ('Columns: wall = first client started -> data complete at the receiver; '
                  'CPU s/GiB = user+sys of sender and receiver processes (and their children) per GiB '
                  'moved; RSS = peak resident memory of each side, summed over its concurrent '
                  'processes; '
                  'x PEER = time per byte relative to that peer (lower is faster); '
                  'in the download tables the server is the sending side; '
                  'aggregate / one-client and aggregate / large = the concurrent clients\' '
                  'throughput over the same peer\'s throughput alone (higher is better).\n')
        print()
        print(header)
        print(table)
        print(legend)
        if args.markdown:
            Path(args.markdown).write_text(header + '\n' + table + '\n' + legend)
        if args.json:
            Path(args.json).write_text(json.dumps({'machine': info, 'versions': vers,
                                                   'args': {k: v for k, v in vars(args).items()},
                                                   'unavailable': unavailable, 'runs': raw}, indent=2))
        if status:
            print(f'RESULT: {sum(1 for r in raw if "error" in r)} run(s) FAILED; see the notes under the tables')
            log('SOME RUNS FAILED (see the notes under the tables); logs: ' + str(ctx.logs))
            args.keep = True
    except KeyboardInterrupt:
        log('interrupted')
        status = 130
    finally:
        cleanup_processes()
        ctx.shared_log.close()
        if args.keep:
            log(f'kept {tmp}')
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        for c in cleanups:
            try:
                c()
            except Exception:
                pass
    return status


if __name__ == '__main__':
    sys.exit(main())
