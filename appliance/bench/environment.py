"""The processes of a benchmark run: the embedded broker, `appliance serve`, the cgroups, the load tools.

    with Environment(progress) as env:     # prepare(): stale bench processes stopped, state wiped
        env.start()                        # broker, appliance serve (as in production), enrolment
        env.run(env.direct, argv)          # a load tool inside an arm's cgroup
        env.appliance_cpu_seconds()        # utime + stime of the serve process
    # close(): tools killed, unenrolled, serve stopped (detaching its programs), broker stopped, cgroups removed

Everything lives apart from the demo and the tests (see plan.py). Children run
in their own sessions, so a Ctrl-C reaches only the harness, which then stops
them in order; a SIGTERM to the harness does the same.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from appliance.bench import plan
from appliance.broker import jvm
from appliance.broker.embedded import EmbeddedBroker
from appliance.config import load_config
from appliance.identity import cgroups

PY = sys.executable
# As Kafka's own producer-perf-test.sh and consumer-perf-test.sh run the tools (kafka-run-class.sh defaults,
# 512 MiB heap): unlike the appliance's short-lived tools, they get the full JIT.
LOAD_JVM_OPTIONS = ("-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
                    "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true")


class BenchError(RuntimeError):
    """The benchmark cannot go on (or one run of it failed); the message says what and where to look."""


@dataclass(frozen=True, slots=True)
class Arm:
    """Where a load tool runs and how it reaches the broker."""

    name: str                       # "direct" or "proxied"
    cgroup: cgroups.Cgroup
    java_config: Path | None        # SASL client .properties for the Java tools (direct only)
    sasl_file: Path | None          # the same credentials for the librdkafka clients (direct only)


def check_prerequisites() -> None:
    """Fail with the reason if this host cannot run the benchmark."""
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root: the appliance loads BPF programs, and the bench creates cgroups")
    else:
        try:
            cgroups.cgroup2_root()
        except cgroups.CgroupError as e:
            problems.append(str(e))
        if " /sys/fs/bpf bpf " not in Path("/proc/mounts").read_text():
            problems.append("bpffs is not mounted at /sys/fs/bpf (run scripts/setup)")
    if shutil.which("java") is None:
        problems.append("java is not installed (run scripts/setup)")
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        problems.append("confluent-kafka does not import (run scripts/setup: it installs the test extras)")
    if problems:
        raise BenchError("scripts/bench cannot run here: " + "; ".join(problems))


class Environment:
    def __init__(self, progress: Callable[[str], None], *, recording: str = "operations"):
        self.progress = progress
        self.recording = recording  # the depth the policy records the bench identity at (plan.policy)
        self.config = None
        self.broker: EmbeddedBroker | None = None
        self.serve: subprocess.Popen | None = None
        self.enrolled = False
        self.direct: Arm | None = None
        self.proxied: Arm | None = None
        self._tools: list[subprocess.Popen] = []
        self._cgroups: list[cgroups.Cgroup] = []
        self._old_sigterm = None

    def __enter__(self) -> Environment:
        self._old_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            self.prepare()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.close()
        finally:
            signal.signal(signal.SIGTERM, self._old_sigterm or signal.SIG_DFL)

    # --- set-up -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Stop what a crashed bench left running, wipe its state, write the configuration and policy."""
        plan.STATE_DIR.mkdir(parents=True, exist_ok=True)
        plan.CONFIG_FILE.write_text("# Written by scripts/bench at every run.\n"
                                    + yaml.safe_dump(plan.appliance_config(), sort_keys=False))
        plan.POLICY_FILE.write_text(plan.policy(recording=self.recording))
        self.config = load_config(plan.CONFIG_FILE)
        self._stop_stale_serve()
        self.broker = EmbeddedBroker(self.config.embedded_broker)
        if self.broker.status().running:
            self.progress("stopping the embedded bench broker a previous run left running")
            self.broker.stop()
        for name in ("audit.db", "audit.db-wal", "audit.db-shm", "enrollments.json", "serve.log"):
            (plan.STATE_DIR / name).unlink(missing_ok=True)
        shutil.rmtree(self.broker.files.kafka_data, ignore_errors=True)  # a fresh, empty broker every run
        shutil.rmtree(plan.WORK_DIR, ignore_errors=True)
        plan.WORK_DIR.mkdir(mode=0o700)

    def start(self) -> None:
        started = time.monotonic()
        self.progress(f"starting the embedded broker on {plan.BOOTSTRAP} (data in {plan.BROKER_DIR})")
        self.broker.start()
        self.progress(f"broker up after {time.monotonic() - started:.1f} s; starting `appliance serve`")
        self._start_serve()
        direct_cg = self._cgroup(plan.CGROUP_DIRECT)
        workload_cg = self._cgroup(plan.CGROUP_WORKLOAD)
        self._enroll(workload_cg)
        creds = self.broker.credentials
        java_config = self.broker.client_properties(plan.WORK_DIR / "direct-client.properties",
                                                    mechanism=creds.mechanism)
        sasl_file = plan.WORK_DIR / "direct-sasl.json"
        sasl_file.touch(mode=0o600)
        sasl_file.write_text(json.dumps({"mechanism": creds.mechanism, "username": creds.username,
                                         "password": creds.password}))
        self.direct = Arm("direct", direct_cg, java_config, sasl_file)
        self.proxied = Arm("proxied", workload_cg, None, None)
        self.progress(f"ready after {time.monotonic() - started:.1f} s: direct from {direct_cg.path} "
                      f"({creds.mechanism} as {creds.username}), proxied from {workload_cg.path} "
                      f"(enrolled as {plan.IDENTITY}, plaintext, steered to port {plan.PROXY_PORT})")

    def _cgroup(self, path: str) -> cgroups.Cgroup:
        cg = cgroups.ensure(path)
        if cg not in self._cgroups:
            self._cgroups.append(cg)
        return cg

    def _start_serve(self) -> None:
        self.config.status_file.unlink(missing_ok=True)
        log = open(self.serve_log, "ab")
        try:
            self.serve = subprocess.Popen([PY, "-m", "appliance", "--config", str(plan.CONFIG_FILE), "serve"],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + 60
        while self.status() is None:
            if self.serve.poll() is not None:
                raise BenchError(f"`appliance serve` exited with {self.serve.returncode} while starting; "
                                 f"log {self.serve_log}:\n{_tail(self.serve_log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"`appliance serve` did not come up in 60 s; log {self.serve_log}:\n"
                                 f"{_tail(self.serve_log)}")
            time.sleep(0.1)

    def _enroll(self, cg: cgroups.Cgroup) -> None:
        self.cli("enroll", cg.path, "--identity", plan.IDENTITY)
        self.enrolled = True
        deadline = time.monotonic() + 10
        while not any(w.get("cgroup_id") == cg.id for w in (self.status() or {}).get("workloads", [])):
            if time.monotonic() > deadline:
                raise BenchError(f"the appliance did not apply the enrolment of {cg.path} within 10 s")
            time.sleep(0.1)

    # --- while running ----------------------------------------------------------------

    @property
    def serve_log(self) -> Path:
        return plan.STATE_DIR / "serve.log"

    def status(self) -> dict | None:
        """The serving appliance's status snapshot, if it is ours and alive."""
        try:
            snapshot = json.loads(self.config.status_file.read_text())
        except (OSError, ValueError):
            return None
        if self.serve is None or self.serve.poll() is not None or snapshot.get("pid") != self.serve.pid:
            return None
        return snapshot

    def ensure_serving(self) -> None:
        if self.serve is None or self.serve.poll() is not None:
            code = None if self.serve is None else self.serve.returncode
            raise BenchError(f"`appliance serve` is not running (exit status {code}); log {self.serve_log}:\n"
                             f"{_tail(self.serve_log)}")

    def appliance_cpu_seconds(self) -> float:
        """utime + stime of the serve process, all its threads (the audit writer too), in seconds."""
        self.ensure_serving()
        return _cpu_seconds(Path(f"/proc/{self.serve.pid}/stat"))

    def accounting(self) -> dict[str, float]:
        """CPU counters to difference around a run: the appliance (whole process and its event-loop thread,
        the main one), the broker, the load generator (this process's waited-for children) and the host."""
        counters: dict[str, float] = {}
        if self.serve is not None and self.serve.poll() is None:
            counters["appliance_cpu_s"] = _cpu_seconds(Path(f"/proc/{self.serve.pid}/stat"))
            counters["appliance_loop_thread_cpu_s"] = _cpu_seconds(Path(f"/proc/{self.serve.pid}/task/{self.serve.pid}/stat"))
        try:  # the pid file names the JVM (its sh wrapper exec'd java); no status(): that would probe the broker
            counters["broker_cpu_s"] = _cpu_seconds(Path(f"/proc/{int(self.broker.files.pid_file.read_text())}/stat"))
        except (AttributeError, OSError, ValueError):
            pass
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        counters["load_generator_cpu_s"] = children.ru_utime + children.ru_stime
        # Host: idle time of all CPUs from /proc/uptime, which the kernel measures precisely. The busy
        # columns of /proc/stat are sampled at the timer tick and miss most of a load that, like the
        # latency client, wakes up in step with the tick (2% busy there while the appliance alone used 25%).
        counters["host_idle_s"] = float(Path("/proc/uptime").read_text().split()[1])
        counters["host_capacity_s"] = time.monotonic() * (os.cpu_count() or 1)
        return counters

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        done = subprocess.run([PY, "-m", "appliance", "--config", str(plan.CONFIG_FILE), *args],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise BenchError(f"`appliance {' '.join(args)}` failed ({done.returncode}): "
                             f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done

    def java_argv(self, main_class: str, *args: str) -> list[str]:
        java = jvm.find_java(self.broker.jar_dir)
        return [java, *LOAD_JVM_OPTIONS, f"-Dlog4j2.configurationFile={self.broker.files.tools_log4j2_config}",
                "-cp", jvm.classpath(self.broker.jar_dir), main_class, *args]

    def client_argv(self, command: str, *args: str) -> list[str]:
        return [PY, "-m", "appliance.bench.clients", command, *args]

    def run(self, arm: Arm | cgroups.Cgroup, argv: list[str], *, timeout: float) -> subprocess.CompletedProcess:
        """Run argv inside the arm's cgroup (moved there before exec, so its first connect is the arm's)."""
        cg = arm.cgroup if isinstance(arm, Arm) else arm
        target = cg.directory / "cgroup.procs"
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True,
                                preexec_fn=lambda: target.write_text(str(os.getpid())))
        self._tools.append(proc)
        # A proxied tool whose appliance has died would retry until its own timeouts: stop it at once.
        watch_serve = isinstance(arm, Arm) and arm.name == "proxied"
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    out, err = proc.communicate(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if watch_serve and (self.serve is None or self.serve.poll() is not None):
                    _kill(proc)
                    raise BenchError(f"`appliance serve` exited during {_name(argv)}; log {self.serve_log}:\n"
                                     f"{_tail(self.serve_log)}")
                if time.monotonic() > deadline:
                    _kill(proc)
                    out, err = proc.communicate()
                    raise BenchError(f"{_name(argv)} in {cg.path} did not finish in {timeout:.0f} s; "
                                     f"stderr: {err.strip()[-1500:]!r}")
        finally:
            if proc.poll() is None:
                _kill(proc)
            self._tools.remove(proc)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def set_policy(self, text: str, timeout: float = 15) -> None:
        """Replace the policy file and wait until the serving appliance has loaded it (or refused it)."""
        self.ensure_serving()
        before = time.time()
        tmp = plan.POLICY_FILE.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, plan.POLICY_FILE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for kind in ("policy-error", "policy-load"):
                rows = json.loads(self.cli("audit", "events", "--kind", kind, "--json", "--limit", "1").stdout)
                if rows and float(rows[0]["at"]) >= before - 0.001:
                    if kind == "policy-error":
                        raise BenchError(rows[0]["message"])
                    return
            time.sleep(0.25)
        raise BenchError(f"the appliance did not report loading {plan.POLICY_FILE} within {timeout:.0f} s")

    # --- tear-down --------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything this run started, in order; never raises, reports what it could not do.

        A second Ctrl-C (or SIGTERM) while this runs is ignored: cutting the tear-down short is what
        would leave a broker running or programs attached.
        """
        # A Python handler rather than SIG_IGN: an ignored signal would be inherited by a serve started here.
        old = {sig: signal.signal(sig, _note_ignored) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._close()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _close(self) -> None:
        problems: list[str] = []
        for proc in list(self._tools):
            _kill(proc)
        self._tools.clear()
        if self.enrolled:
            try:
                self.cli("unenroll", plan.CGROUP_WORKLOAD, check=False, timeout=30)
            except Exception as e:  # noqa: BLE001
                problems.append(f"unenroll: {e}")
            self.enrolled = False
        if self.serve is not None:
            problems += self._stop_serve()
        if self.broker is not None:
            try:
                self.broker.stop()
            except Exception as e:  # noqa: BLE001
                problems.append(f"stopping the broker: {e}")
            shutil.rmtree(self.broker.files.kafka_data, ignore_errors=True)
        for cg in reversed(self._cgroups + [cgroups.Cgroup(plan.CGROUP_PROXY, 0), cgroups.Cgroup(plan.CGROUP_BROKER, 0)]):
            for _ in range(50):
                try:
                    cgroups.remove(cg)
                    break
                except cgroups.CgroupError:
                    time.sleep(0.1)
            else:
                problems.append(f"cgroup {cg.path} still holds processes")
        self._cgroups.clear()
        for problem in problems:
            self.progress(f"WARNING while stopping: {problem}")

    def _stop_serve(self) -> list[str]:
        problems = []
        proc, self.serve = self.serve, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                problems.append("`appliance serve` ignored SIGTERM for 30 s; killed")
                _kill(proc)
        if proc.returncode not in (0, None):
            problems.append(f"`appliance serve` exited with {proc.returncode}; log {self.serve_log}")
        leftovers = self._attached_programs()
        if leftovers:
            # A serve that died without detaching: a fresh one takes the set over and detaches it when it stops.
            self.progress(f"{len(leftovers)} programs still attached for {plan.BPFFS_DIR}; starting and stopping "
                          "`appliance serve` once to detach them")
            try:
                self._start_serve()
                self.serve.send_signal(signal.SIGTERM)
                self.serve.wait(30)
            except Exception as e:  # noqa: BLE001
                problems.append(f"detaching leftover programs: {e}")
                if self.serve is not None and self.serve.poll() is None:
                    _kill(self.serve)
            self.serve = None
            if self._attached_programs():
                problems.append(f"programs of {plan.BPFFS_DIR} are still attached; see `appliance --config "
                                f"{plan.CONFIG_FILE} status`")
        return problems

    def _attached_programs(self) -> list[dict]:
        try:
            done = self.cli("status", "--json", check=False, timeout=30)
            return [p for p in json.loads(done.stdout)["attached_programs"] if p.get("bpffs_dir") == str(plan.BPFFS_DIR)]
        except Exception:  # noqa: BLE001
            return []

    def _stop_stale_serve(self) -> None:
        """A serve a crashed bench left behind: its pid is in our status file, and its command line names our config."""
        try:
            pid = int(json.loads(self.config.status_file.read_text())["pid"])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, KeyError, TypeError):
            return
        if str(plan.CONFIG_FILE).encode() not in cmdline or b"serve" not in cmdline:
            return
        self.progress(f"stopping `appliance serve` (pid {pid}) that a previous bench run left running")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)


def _note_ignored(signum, frame):
    print(f"bench: signal {signum} ignored while stopping what it started", file=sys.stderr)


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(stat: Path) -> float:
    """utime + stime from a /proc stat file (fields 14 and 15 of proc(5); the comm field may hold spaces)."""
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _kill(proc: subprocess.Popen) -> None:
    """Kill a child and its session (a tool's own children, if any)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        proc.kill()
    proc.wait()


def _name(argv: list[str]) -> str:
    for part in argv:
        if part.startswith("org.apache.kafka.") or part in ("latency", "connect", "create-topics", "sample"):
            return part.rsplit(".", 1)[-1]
    return Path(argv[0]).name


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"
