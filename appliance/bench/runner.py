"""The measurements: each figure's runs, both arms alternately, repetition after repetition.

Load generators (the same for both arms of a figure):

- produce and consume throughput, and the masking arm: Apache Kafka 4.1's own
  `org.apache.kafka.tools.ProducerPerformance` and `ConsumerPerformance` from
  the cached jars;
- publish latency: librdkafka (confluent-kafka), in appliance/bench/clients.py,
  because the Java tools report latencies in whole milliseconds, too coarse for
  a sub-millisecond difference;
- connection set-up: a raw-protocol client in clients.py (see its `connect`).

Every run is one process in an arm's cgroup. Around each run the CPU time of
the appliance (/proc/<serve pid>/stat), the broker and the load generator is
read, and how busy the host was; a run that fails is recorded against its
figures, and the plan goes on.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable

from appliance.bench import parse, plan
from appliance.bench.environment import Arm, BenchError, Environment
from appliance.bench.figures import SIZES, size_label
from appliance.bench.stats import percentile

MB = 1024 * 1024


class Runner:
    def __init__(self, env: Environment, options: plan.Options, groups: tuple[str, ...],
                 progress: Callable[[str], None]):
        self.env = env
        self.options = options
        self.groups = groups
        self.progress = progress
        self.samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.problems: dict[str, tuple[str, str]] = {}
        self.runs: list[dict] = []  # every run's raw figures, for the JSON document
        self.notes: list[str] = []

    # --- the plan ---------------------------------------------------------------------

    def run(self) -> None:
        self._create_topics()
        if self._warms_up:
            self._warm_up()
        for group in self.groups:
            getattr(self, f"_{group}")()
        if self.options.recording == "excerpts":
            self._count_excerpts()

    def _count_excerpts(self) -> None:
        """With --recording excerpts: how many record excerpts the proxied arm's audit holds (none would mean the
        figures measured nothing of recording)."""
        import sqlite3

        try:
            conn = sqlite3.connect(f"file:{plan.STATE_DIR / 'audit.db'}?mode=ro", uri=True)
            excerpts, operations = conn.execute(
                "SELECT (SELECT count(*) FROM record_excerpts), (SELECT count(*) FROM operations "
                "WHERE api_name IN ('Produce', 'Fetch'))").fetchone()
            conn.close()
        except sqlite3.Error as e:
            self.notes.append(f"recording: could not count the record excerpts: {e}")
            return
        self.runs.append({"figure": "recording verification", "record_excerpts": excerpts,
                          "produce_and_fetch_operations": operations})
        self.progress(f"recording: {excerpts:,} record excerpts for {operations:,} Produce and Fetch operations")
        if not excerpts:
            self.notes.append("recording: --recording excerpts, but the audit holds no record excerpt")

    @property
    def _warms_up(self) -> bool:
        return not self.options.quick and bool({"produce", "consume", "latency", "masking"} & set(self.groups))

    def _warm_up(self) -> None:
        """One discarded produce (and consume) run per arm, so that the first measured run does not pay for a
        cold broker (JIT, page cache, log segment creation) or a cold appliance."""
        records = min(self.options.records, 50_000)
        consume = "consume" in self.groups
        self.progress(f"warm-up: {records:,} records of 1 KiB produced{' and consumed' if consume else ''} "
                      "in each arm, not measured")
        for arm in (self.env.direct, self.env.proxied):
            try:
                self._producer_perf(arm, plan.warmup_topic(), records, size=1024)
                if consume:
                    self._consumer_perf(arm, plan.warmup_topic(), records, f"{plan.TOPIC_PREFIX}warmup-{arm.name}")
            except BenchError as e:
                self.progress(f"  warm-up {arm.name} failed (the measured runs will say more): {e}")

    def _reps(self):
        for rep in range(1, self.options.repeat + 1):
            for arm_name in plan.arm_order(rep):
                yield rep, self._arm(arm_name)

    def _arm(self, name: str) -> Arm:
        return self.env.direct if name == "direct" else self.env.proxied

    def _topics(self) -> list[str]:
        topics = [plan.warmup_topic()] if self._warms_up else []
        reps = range(1, self.options.repeat + 1)
        if "produce" in self.groups:
            topics += [plan.topic("produce", s, a, r) for s in SIZES for a in ("direct", "proxied") for r in reps]
        if "consume" in self.groups:
            topics += [plan.fill_topic(s) for s in SIZES]
        if "latency" in self.groups:
            topics += [plan.topic("latency", 1024, a, r) for a in ("direct", "proxied") for r in reps]
        if "masking" in self.groups:
            topics += [plan.topic("masking", "json", a, r) for a in ("direct", "proxied") for r in reps]
        return topics

    def _create_topics(self) -> None:
        topics = self._topics()
        if not topics:
            return
        self.progress(f"creating {len(topics)} topics (one partition each), directly")
        result = self._client(self.env.direct, "create-topics", plan.BOOTSTRAP, *topics, timeout=120)
        if result.get("errors"):
            raise BenchError(f"cannot create the bench topics: {result['errors'][:3]}")

    # --- one run of each kind ---------------------------------------------------------

    def _measure(self, keys: list[str], label: str, arm: Arm, rep: int, body: Callable[[], dict]) -> dict | None:
        """Run one measurement; a failure is recorded against its figures and the plan goes on."""
        # The previous run's writes would otherwise be written back by the kernel (30 s after they were made)
        # in the middle of this one: flush them now, outside the timing.
        os.sync()
        started = time.monotonic()
        try:
            if arm.name == "proxied":
                self.env.ensure_serving()
            result = body()
        except BenchError as e:
            reason = str(e).splitlines()[0][:400]
            for key in keys:
                self.problems.setdefault(key, ("failed", f"{arm.name}, repetition {rep}: {reason}"))
            self.progress(f"  {label:<22} rep {rep}/{self.options.repeat}  {arm.name:<8} FAILED: {reason}")
            self.runs.append({"figure": label, "arm": arm.name, "repetition": rep, "error": str(e)[:2000]})
            return None
        result.update(figure=label, arm=arm.name, repetition=rep, wall_s=round(time.monotonic() - started, 3))
        self.runs.append(result)
        return result

    def _with_cpu(self, arm: Arm, body: Callable[[], dict]) -> dict:
        """Run body and add what each process spent meanwhile: the appliance (proxied arm), the broker,
        the load generator, and how busy the host was (its other tenants included)."""
        before = self.env.accounting()
        result = body()
        after = self.env.accounting()
        spent = {k: after[k] - before[k] for k in before if k in after}
        capacity = spent.pop("host_capacity_s", 0)
        idle = spent.pop("host_idle_s", 0)
        if capacity > 0:
            result["host_cpu_busy_pct"] = round(max(0.0, 100 * (1 - idle / capacity)), 1)
        if arm.name != "proxied":  # the appliance serves nothing meanwhile: its idle cost
            spent.pop("appliance_loop_thread_cpu_s", None)
            if "appliance_cpu_s" in spent:
                spent["appliance_idle_cpu_s"] = spent.pop("appliance_cpu_s")
        result.update({k: round(v, 3) for k, v in spent.items()})
        return result

    def _producer_perf(self, arm: Arm, topic: str, records: int, *, size: int | None = None,
                       payload_file=None) -> dict:
        args = ["--topic", topic, "--num-records", str(records), "--throughput", "-1",
                "--producer-props", f"bootstrap.servers={plan.BOOTSTRAP}", "acks=all", "enable.idempotence=true",
                f"client.id=bench-{arm.name}"]
        args += ["--record-size", str(size)] if payload_file is None else ["--payload-file", str(payload_file)]
        if arm.java_config is not None:
            args += ["--producer.config", str(arm.java_config)]
        _, totals = self._kafka_tool(arm, "ProducerPerformance", args, records, parse.producer_totals)
        if totals.records != records:
            raise BenchError(f"ProducerPerformance sent {totals.records} of {records} records")
        return {"records": totals.records, "records_per_s": totals.records_per_s, "mb_per_s": totals.mb_per_s,
                "java_avg_latency_ms": totals.avg_latency_ms, "java_p99_ms": totals.p99_ms,
                "mb": totals.records * (size or 0) / MB if size else None}

    def _kafka_tool(self, arm: Arm, tool: str, args: list[str], records: int, read_totals):
        """Run one of Kafka's performance tools (`org.apache.kafka.tools.<tool>`) in `arm`: the finished
        process and its totals as `read_totals` parses them, or BenchError naming what went wrong."""
        done = self.env.run(arm, self.env.java_argv(f"org.apache.kafka.tools.{tool}", *args),
                            timeout=90 + records / 1000)
        errors = parse.java_errors(done.stderr)
        if done.returncode != 0 or errors:
            raise BenchError(f"{tool} exited {done.returncode}: {(errors or [done.stderr.strip()[-500:]])[0]}")
        try:
            return done, read_totals(done.stdout)
        except parse.ToolOutputError as e:
            raise BenchError(str(e)) from None

    def _consumer_perf(self, arm: Arm, topic: str, records: int, group: str) -> dict:
        args = ["--bootstrap-server", plan.BOOTSTRAP, "--topic", topic, "--messages", str(records),
                "--group", group, "--timeout", "30000"]
        if arm.java_config is not None:
            args += ["--consumer.config", str(arm.java_config)]
        done, totals = self._kafka_tool(arm, "ConsumerPerformance", args, records, parse.consumer_totals)
        if totals.records < records:
            raise BenchError(f"ConsumerPerformance read {totals.records} of {records} records "
                             f"({done.stdout.strip().splitlines()[-1][:200] if done.stdout.strip() else ''})")
        return {"records": totals.records, "records_per_s": totals.fetch_records_per_s,
                "mb_per_s": totals.fetch_mb_per_s, "mb": totals.mb, "rebalance_ms": totals.rebalance_ms,
                "fetch_ms": totals.fetch_ms}

    def _client(self, arm: Arm, command: str, *args: str, timeout: float) -> dict:
        if arm.sasl_file is not None:
            args = (*args, "--sasl-file", str(arm.sasl_file))
        done = self.env.run(arm, self.env.client_argv(command, *args), timeout=timeout)
        try:
            result = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise BenchError(f"bench client {command} exited {done.returncode} without a result; "
                             f"stderr: {done.stderr.strip()[-800:]!r}") from None
        if result.get("error"):
            raise BenchError(f"bench client {command}: {result['error']}")
        return result

    def _record(self, key: str, arm: str, value: float | None) -> None:
        if value is not None:
            self.samples[key][arm].append(float(value))

    def _report(self, label: str, rep: int, arm: Arm, text: str, result: dict) -> None:
        cpu = ""
        if "host_cpu_busy_pct" in result:
            cpu += f"  host CPU {result['host_cpu_busy_pct']:.0f}%"
        if "appliance_cpu_s" in result:
            cpu += f"  appliance CPU {result['appliance_cpu_s']:.2f} s"
            if result.get("mb"):
                cpu += f" ({result['appliance_cpu_s'] / result['mb']:.4f} s/MB)"
        self.progress(f"  {label:<22} rep {rep}/{self.options.repeat}  {arm.name:<8} {text}{cpu}")

    # --- the figures ------------------------------------------------------------------

    def _throughput(self, group: str, size: int, result: dict, arm: Arm) -> None:
        self._record(f"{group}.{size}.records_per_s", arm.name, result["records_per_s"])
        self._record(f"{group}.{size}.mb_per_s", arm.name, result["mb_per_s"])
        if arm.name == "proxied" and result.get("mb"):
            self._record(f"cpu.{group}.{size}", arm.name, result["appliance_cpu_s"] / result["mb"])

    def _produce(self) -> None:
        self.progress(f"produce: ProducerPerformance, {self.options.records_for(1024):,} records of 1 KiB or "
                      f"{self.options.records_for(100):,} of 100 B per run, acks=all, "
                      "idempotent, no throttle")
        for size in SIZES:
            label = f"produce {size_label(size)}"
            keys = [f"produce.{size}.records_per_s", f"produce.{size}.mb_per_s", f"cpu.produce.{size}"]
            for rep, arm in self._reps():
                topic = plan.topic("produce", size, arm.name, rep)
                result = self._measure(keys, label, arm, rep, lambda: self._with_cpu(
                    arm, lambda: self._producer_perf(arm, topic, self.options.records_for(size), size=size)))
                if result:
                    self._throughput("produce", size, result, arm)
                    self._report(label, rep, arm, f"{result['records_per_s']:>11,.0f} records/s "
                                 f"{result['mb_per_s']:8.2f} MB/s", result)

    def _consume(self) -> None:
        self.progress(f"consume: filling {', '.join(plan.fill_topic(s) for s in SIZES)} with "
                      f"{self.options.records_for(100, 'consume'):,} and {self.options.records_for(1024, 'consume'):,} "
                      "records, directly")
        for size in SIZES:
            try:
                self._producer_perf(self.env.direct, plan.fill_topic(size), self.options.records_for(size, "consume"),
                                    size=size)
            except BenchError as e:
                for key in (f"consume.{size}.records_per_s", f"consume.{size}.mb_per_s", f"cpu.consume.{size}"):
                    self.problems[key] = ("failed", f"filling {plan.fill_topic(size)}: {e}")
                self.progress(f"  filling {plan.fill_topic(size)} FAILED: {e}")
        self.progress("consume: ConsumerPerformance from the beginning, a new consumer group per run; "
                      "figures are its fetch rates (group join excluded)")
        for size in SIZES:
            label = f"consume {size_label(size)}"
            keys = [f"consume.{size}.records_per_s", f"consume.{size}.mb_per_s", f"cpu.consume.{size}"]
            if keys[0] in self.problems:
                continue
            for rep, arm in self._reps():
                group = plan.consumer_group(size, arm.name, rep)
                result = self._measure(keys, label, arm, rep, lambda: self._with_cpu(
                    arm, lambda: self._consumer_perf(arm, plan.fill_topic(size),
                                                     self.options.records_for(size, "consume"), group)))
                if result:
                    self._throughput("consume", size, result, arm)
                    self._report(label, rep, arm, f"{result['records_per_s']:>11,.0f} records/s "
                                 f"{result['mb_per_s']:8.2f} MB/s (join {result['rebalance_ms']:.0f} ms)", result)

    def _latency(self) -> None:
        o = self.options
        warmup = round(min(2.0, o.latency_seconds / 5), 2)
        self.progress(f"latency: librdkafka at a fixed {o.latency_rate:,} records/s of 1 KiB for "
                      f"{o.latency_seconds:g} s after {warmup:g} s of warm-up, acks=all, "
                      "idempotent, linger.ms=0")
        keys = ["latency.p50_ms", "latency.p99_ms", "latency.p999_ms"]
        for rep, arm in self._reps():
            topic = plan.topic("latency", 1024, arm.name, rep)

            def body(arm=arm, topic=topic):
                r = self._client(arm, "latency", plan.BOOTSTRAP, topic, "--rate", str(o.latency_rate),
                                 "--seconds", str(o.latency_seconds), "--size", "1024",
                                 "--warmup", str(warmup), timeout=60 + 2 * o.latency_seconds)
                if r["error_count"] or r["undelivered"] or not r["latencies_us"]:
                    raise BenchError(f"{r['error_count']} delivery errors, {r['undelivered']} undelivered: "
                                     f"{r['errors'][:2]}")
                lat = r.pop("latencies_us")
                return {**r, "delivered": len(lat), "p50_ms": percentile(lat, 50) / 1000,
                        "p99_ms": percentile(lat, 99) / 1000, "p999_ms": percentile(lat, 99.9) / 1000,
                        "max_ms": max(lat) / 1000}

            result = self._measure(keys, "publish latency", arm, rep, lambda: self._with_cpu(arm, body))
            if result:
                for q in ("p50", "p99", "p999"):
                    self._record(f"latency.{q}_ms", arm.name, result[f"{q}_ms"])
                if result["achieved_rate"] < 0.95 * o.latency_rate:
                    note = (f"latency {arm.name} repetition {rep}: the client reached only "
                            f"{result['achieved_rate']:,.0f} of {o.latency_rate:,} records/s")
                    self.notes.append(note)
                    self.progress(f"  WARNING: {note}")
                self._report("publish latency", rep, arm, f"p50 {result['p50_ms']:.3f} ms  p99 "
                             f"{result['p99_ms']:.3f} ms  p99.9 {result['p999_ms']:.3f} ms", result)

    def _connect(self) -> None:
        n = self.options.connects
        self.progress(f"connect: {n} fresh connections one after another (raw protocol: TCP, ApiVersions, SASL SCRAM "
                      "in the direct arm, Metadata), each timed from connect() to its metadata answer")
        keys = ["connect.median_ms", "connect.max_ms"]
        for rep, arm in self._reps():
            def body(arm=arm):
                r = self._client(arm, "connect", plan.BOOTSTRAP, "--count", str(n), timeout=60 + 5 * n)
                times = r["connect_ms"]
                steps = {name: percentile(values, 50) for name, values in r["steps"].items()}
                return {"connect_ms": times, "median_ms": percentile(times, 50), "max_ms": max(times),
                        "step_medians_ms": steps}

            result = self._measure(keys, "connect", arm, rep, lambda: self._with_cpu(arm, body))
            if result:
                self._record("connect.median_ms", arm.name, result["median_ms"])
                self._record("connect.max_ms", arm.name, result["max_ms"])
                s = result["step_medians_ms"]
                self._report("connect", rep, arm, f"median {result['median_ms']:.2f} ms  slowest "
                             f"{result['max_ms']:.2f} ms  (tcp {s['tcp_ms']:.2f}, ApiVersions "
                             f"{s['api_versions_ms']:.2f}, SASL {s['sasl_ms']:.2f}, Metadata {s['metadata_ms']:.2f})",
                             result)

    def _masking(self) -> None:
        keys = ["masking.records_per_s", "masking.mb_per_s", "cpu.masking"]
        masked_policy = plan.policy(masking=True, recording=self.options.recording)
        candidate = plan.WORK_DIR / "policy-masking.yaml"
        candidate.write_text(masked_policy)
        check = self.env.cli("policy", "check", str(candidate), check=False)
        reason = None
        if check.returncode != 0:
            reason = (check.stderr or check.stdout).strip().removeprefix("Error: ")
        else:
            try:
                self.env.set_policy(masked_policy)
            except BenchError as e:
                reason = f"the appliance did not load the masking policy: {e}"
        if reason:
            for key in keys:
                self.problems[key] = ("not available", reason)
            self.progress(f"masking: not available: {reason}")
            return
        payloads = plan.WORK_DIR / "masking-payloads.txt"
        payloads.write_text("\n".join(plan.masking_payloads()) + "\n")
        records = self.options.masked_records
        self.progress(f"masking: policy with masking rule {plan.MASKING_RULE['name']!r} in force; ProducerPerformance "
                      f"with {records:,} JSON records of about 1 KiB, each holding an e-mail address")
        for rep, arm in self._reps():
            topic = plan.topic("masking", "json", arm.name, rep)

            def body(arm=arm, topic=topic):
                r = self._producer_perf(arm, topic, records, payload_file=payloads)
                r["mb"] = r["records"] / r["records_per_s"] * r["mb_per_s"] if r["records_per_s"] else None
                return r

            result = self._measure(keys, "masked produce", arm, rep, lambda: self._with_cpu(arm, body))
            if result:
                self._record("masking.records_per_s", arm.name, result["records_per_s"])
                self._record("masking.mb_per_s", arm.name, result["mb_per_s"])
                if arm.name == "proxied" and result.get("mb"):
                    self._record("cpu.masking", arm.name, result["appliance_cpu_s"] / result["mb"])
                self._report("masked produce", rep, arm, f"{result['records_per_s']:>11,.0f} records/s "
                             f"{result['mb_per_s']:8.2f} MB/s", result)
        self._verify_masking()

    def _verify_masking(self) -> None:
        """Read back what the broker stored from the proxied arm: an e-mail address in it means nothing was masked."""
        topic = plan.topic("masking", "json", "proxied", 1)
        try:
            values = self._client(self.env.direct, "sample", plan.BOOTSTRAP, topic, "--count", "5", timeout=60)["values"]
        except BenchError as e:
            self.notes.append(f"masking: could not read back {topic}: {e}")
            return
        unmasked = [v for v in values if f"@{plan.MASKING_EMAIL_DOMAIN}" in v]
        self.runs.append({"figure": "masking verification", "topic": topic, "sampled": len(values),
                          "unmasked": len(unmasked), "example": values[0][:200] if values else None})
        if not values:
            self.notes.append(f"masking: no records to read back from {topic}")
        elif unmasked:
            reason = (f"the masking policy loaded, but {len(unmasked)} of {len(values)} records read back from "
                      f"{topic} still hold their e-mail address")
            for key in ("masking.records_per_s", "masking.mb_per_s", "cpu.masking"):
                self.problems.setdefault(key, ("failed", reason))
            self.progress(f"masking: WARNING: {reason}")
        else:
            self.progress(f"masking: verified, {len(values)} records read back from {topic} hold no e-mail address")
