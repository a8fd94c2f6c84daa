/*
 * An unmodified Apache Kafka 4.x Java client for the integration tests: producer, consumer (classic
 * group protocol or KIP-848) and admin, each printing what happened as JSON lines on stdout.
 *
 *   FamilyClient [--config KEY=VALUE]... MODE ARGS...
 *       every --config is a client property, given to each producer, consumer and admin the mode makes
 *       (security.protocol, sasl.mechanism, sasl.jaas.config, ...: what a workload's client.properties
 *       would hold); a refused login is one of the summary's errors, in Kafka's words
 *
 *   produce  BOOTSTRAP TOPIC N FORMAT TIMEOUT_MS
 *       idempotent, acks=all; FORMAT's %d is the record's index
 *       {"acked", "failed", "errors": {text: count}}
 *   consume  BOOTSTRAP TOPIC GROUP N PROTOCOL TIMEOUT_MS     (PROTOCOL: classic | consumer)
 *       {"ready": true} once partitions are assigned and three fetches have come back, so that the
 *       fetch session (KIP-227) is incremental from then on; then
 *       {"values": [...], "errors": [...], "assigned_topics": [...]}.
 *       Stops at the first exception that is not retriable. TOPIC "re:REGEX" subscribes to a pattern:
 *       resolved by the client from metadata (classic) or by the broker's group coordinator (KIP-848).
 *       N = 0 stops as soon as it is ready, to report what the group assigned.
 *   metadata BOOTSTRAP TIMEOUT_MS
 *       KafkaConsumer.listTopics(): {"topics": [...], "errors": [...]}
 *   admin    BOOTSTRAP TIMEOUT_MS key=value...
 *       keys: allowed, denied, new_topic, new_denied, group, denied_group
 *       {"calls": {name: {"ok", "value" | "error", "message", "elapsed_ms"}}}, one entry per call.
 *
 * Every call is bounded by TIMEOUT_MS, so nothing here can hang a test: a call that never answers
 * is reported as java.util.concurrent.TimeoutException.
 */

import com.fasterxml.jackson.databind.ObjectMapper;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.regex.Pattern;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.ListTopicsOptions;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.CloseOptions;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.SubscriptionPattern;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.KafkaFuture;
import org.apache.kafka.common.Metric;
import org.apache.kafka.common.MetricName;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.errors.RetriableException;
import org.apache.kafka.common.quota.ClientQuotaAlteration;
import org.apache.kafka.common.quota.ClientQuotaEntity;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public final class FamilyClient {
    private static final ObjectMapper JSON = new ObjectMapper();
    // The --config properties: the workload's own client configuration, under the harness's settings.
    private static final Properties CLIENT_CONFIG = new Properties();

    public static void main(String[] argv) throws Exception {
        int first = 0;
        while (first + 1 < argv.length && argv[first].equals("--config")) {
            String[] kv = argv[first + 1].split("=", 2);
            if (kv.length != 2) {
                throw new IllegalArgumentException("--config takes KEY=VALUE, not " + argv[first + 1]);
            }
            CLIENT_CONFIG.put(kv[0], kv[1]);
            first += 2;
        }
        String[] args = Arrays.copyOfRange(argv, first, argv.length);
        switch (args[0]) {
            case "produce" -> produce(args[1], args[2], Integer.parseInt(args[3]), args[4], Integer.parseInt(args[5]));
            case "consume" -> consume(args[1], args[2], args[3], Integer.parseInt(args[4]), args[5],
                                      Integer.parseInt(args[6]));
            case "metadata" -> metadata(args[1], Integer.parseInt(args[2]));
            case "admin" -> admin(args[1], Integer.parseInt(args[2]), keyValues(args, 3));
            default -> throw new IllegalArgumentException("unknown mode " + args[0]);
        }
        // Client threads must not keep the JVM (and the test) waiting.
        System.exit(0);
    }

    private static void emit(Map<String, ?> value) throws Exception {
        System.out.println(JSON.writeValueAsString(value));
        System.out.flush();
    }

    private static String describe(Throwable t) {
        Throwable cause = t instanceof ExecutionException && t.getCause() != null ? t.getCause() : t;
        return cause.getClass().getName() + ": " + cause.getMessage();
    }

    private static Properties clientConfig() {
        Properties p = new Properties();
        p.putAll(CLIENT_CONFIG);
        return p;
    }

    private static Map<String, String> keyValues(String[] args, int from) {
        Map<String, String> out = new HashMap<>();
        for (int i = from; i < args.length; i++) {
            String[] kv = args[i].split("=", 2);
            out.put(kv[0], kv[1]);
        }
        return out;
    }

    private static void produce(String bootstrap, String topic, int n, String format, int timeoutMs) throws Exception {
        Properties p = clientConfig();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, String.valueOf(timeoutMs));
        p.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, String.valueOf(Math.min(timeoutMs, 10_000)));
        p.put(ProducerConfig.LINGER_MS_CONFIG, "0");
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, String.valueOf(timeoutMs));
        AtomicInteger acked = new AtomicInteger(), failed = new AtomicInteger();
        Map<String, Integer> errors = new TreeMap<>();
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p, new StringSerializer(), new StringSerializer())) {
            for (int i = 0; i < n; i++) {
                try {
                    producer.send(new ProducerRecord<>(topic, String.format(format, i)), (md, e) -> {
                        if (e == null) {
                            acked.incrementAndGet();
                        } else {
                            failed.incrementAndGet();
                            synchronized (errors) { errors.merge(describe(e), 1, Integer::sum); }
                        }
                    });
                } catch (Exception e) { // send() itself throws when metadata for the topic never came
                    failed.incrementAndGet();
                    synchronized (errors) { errors.merge(describe(e), 1, Integer::sum); }
                }
            }
            producer.flush();
            producer.close(Duration.ofSeconds(2));
        }
        synchronized (errors) {
            emit(Map.of("acked", acked.get(), "failed", failed.get(), "errors", errors));
        }
    }

    private static long fetchTotal(KafkaConsumer<?, ?> consumer) {
        for (Map.Entry<MetricName, ? extends Metric> e : consumer.metrics().entrySet()) {
            MetricName name = e.getKey();
            if (name.name().equals("fetch-total") && name.group().equals("consumer-fetch-manager-metrics")
                    && !name.tags().containsKey("topic")) {
                return (long) ((Number) e.getValue().metricValue()).doubleValue();
            }
        }
        return -1;
    }

    private static void consume(String bootstrap, String topic, String group, int n, String protocol, int timeoutMs)
            throws Exception {
        Properties p = clientConfig();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        p.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, protocol);
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.FETCH_MAX_WAIT_MS_CONFIG, "500");
        p.put(ConsumerConfig.REQUEST_TIMEOUT_MS_CONFIG, String.valueOf(Math.min(timeoutMs, 10_000)));
        p.put(ConsumerConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, String.valueOf(timeoutMs));
        List<String> values = new ArrayList<>();
        List<String> errors = new ArrayList<>();
        Collection<String> assigned = new TreeSet<>();
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(p, new StringDeserializer(), new StringDeserializer())) {
            if (!topic.startsWith("re:")) {
                consumer.subscribe(List.of(topic));
            } else if (protocol.equals("consumer")) {
                consumer.subscribe(new SubscriptionPattern(topic.substring(3)));
            } else {
                consumer.subscribe(Pattern.compile(topic.substring(3)));
            }
            long fetchesAtAssignment = -1, assignedAt = 0;
            boolean ready = false;
            while ((values.size() < n || (n == 0 && !ready)) && System.nanoTime() < deadline) {
                try {
                    for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(200))) {
                        values.add(r.value());
                    }
                } catch (Exception e) {
                    errors.add(describe(e));
                    if (!(e instanceof RetriableException)) {
                        break;
                    }
                }
                consumer.assignment().forEach(tp -> assigned.add(tp.topic()));
                if (!ready && !consumer.assignment().isEmpty()) {
                    if (fetchesAtAssignment < 0) {
                        fetchesAtAssignment = fetchTotal(consumer);
                        assignedAt = System.nanoTime();
                    }
                    long now = fetchTotal(consumer);
                    // Without the metric (it has moved before), two seconds of 500 ms fetches will do.
                    ready = now >= 0 ? now >= fetchesAtAssignment + 3
                                     : System.nanoTime() - assignedAt > TimeUnit.SECONDS.toNanos(2);
                    if (ready) {
                        emit(Map.of("ready", true));
                    }
                }
            }
            if ((values.size() < n || (n == 0 && !ready)) && errors.isEmpty()) {
                errors.add("timed out with " + values.size() + " of " + n + " records" + (ready ? "" : ", never ready"));
            }
            consumer.close(CloseOptions.timeout(Duration.ofSeconds(2)));
        }
        emit(Map.of("values", values, "errors", errors, "assigned_topics", assigned));
    }

    private static void metadata(String bootstrap, int timeoutMs) throws Exception {
        Properties p = clientConfig();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, String.valueOf(timeoutMs));
        List<String> errors = new ArrayList<>();
        Collection<String> topics = new TreeSet<>();
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(p, new StringDeserializer(), new StringDeserializer())) {
            topics.addAll(consumer.listTopics(Duration.ofMillis(timeoutMs)).keySet());
        } catch (Exception e) {
            errors.add(describe(e));
        }
        emit(Map.of("topics", topics, "errors", errors));
    }

    @FunctionalInterface
    private interface Call {
        Object run() throws Exception;
    }

    private static void admin(String bootstrap, int timeoutMs, Map<String, String> names) throws Exception {
        Properties p = clientConfig();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, String.valueOf(timeoutMs));
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, String.valueOf(timeoutMs));
        Map<String, Object> calls = new LinkedHashMap<>();
        try (Admin admin = Admin.create(p)) {
            Map<String, Call> plan = new LinkedHashMap<>();
            plan.put("createTopics", () -> wait(admin.createTopics(List.of(new NewTopic(names.get("new_topic"), 1, (short) 1))).all(), timeoutMs));
            plan.put("createTopics.denied", () -> wait(admin.createTopics(List.of(new NewTopic(names.get("new_denied"), 1, (short) 1))).all(), timeoutMs));
            plan.put("describeTopics", () -> {
                var d = wait(admin.describeTopics(List.of(names.get("allowed"))).allTopicNames(), timeoutMs);
                return Map.of("partitions", d.get(names.get("allowed")).partitions().size());
            });
            plan.put("describeTopics.denied", () -> wait(admin.describeTopics(List.of(names.get("denied"))).allTopicNames(), timeoutMs).keySet());
            plan.put("listTopics", () -> new TreeSet<>(wait(admin.listTopics(new ListTopicsOptions().listInternal(true)).names(), timeoutMs)));
            plan.put("describeCluster", () -> {
                var c = admin.describeCluster();
                return Map.of("cluster_id", String.valueOf(wait(c.clusterId(), timeoutMs)), "nodes", wait(c.nodes(), timeoutMs).size());
            });
            plan.put("describeConsumerGroups", () -> wait(admin.describeConsumerGroups(List.of(names.get("group"))).all(), timeoutMs).get(names.get("group")).groupState().toString());
            plan.put("describeConsumerGroups.denied", () -> wait(admin.describeConsumerGroups(List.of(names.get("denied_group"))).all(), timeoutMs).keySet());
            plan.put("createAcls", () -> wait(admin.createAcls(List.of(new AclBinding(
                    new ResourcePattern(ResourceType.TOPIC, names.get("allowed"), PatternType.LITERAL),
                    new AccessControlEntry("User:fam-app", "*", AclOperation.READ, AclPermissionType.ALLOW)))).all(), timeoutMs));
            plan.put("alterClientQuotas", () -> wait(admin.alterClientQuotas(List.of(new ClientQuotaAlteration(
                    new ClientQuotaEntity(Map.of(ClientQuotaEntity.USER, "fam-app")),
                    List.of(new ClientQuotaAlteration.Op("producer_byte_rate", 1048576.0))))).all(), timeoutMs));
            plan.put("incrementalAlterConfigs", () -> wait(admin.incrementalAlterConfigs(Map.of(
                    new ConfigResource(ConfigResource.Type.TOPIC, names.get("allowed")),
                    List.of(new AlterConfigOp(new ConfigEntry("retention.ms", "3600000"), AlterConfigOp.OpType.SET)))).all(), timeoutMs));
            plan.put("incrementalAlterConfigs.denied", () -> wait(admin.incrementalAlterConfigs(Map.of(
                    new ConfigResource(ConfigResource.Type.TOPIC, names.get("denied")),
                    List.of(new AlterConfigOp(new ConfigEntry("retention.ms", "3600000"), AlterConfigOp.OpType.SET)))).all(), timeoutMs));
            for (Map.Entry<String, Call> e : plan.entrySet()) {
                long started = System.nanoTime();
                Map<String, Object> result = new LinkedHashMap<>();
                try {
                    Object value = e.getValue().run();
                    result.put("ok", true);
                    result.put("value", value == null ? null : value instanceof Map || value instanceof Collection ? value : value.toString());
                } catch (Exception ex) {
                    Throwable cause = ex instanceof ExecutionException && ex.getCause() != null ? ex.getCause() : ex;
                    result.put("ok", false);
                    result.put("error", cause.getClass().getName());
                    result.put("message", String.valueOf(cause.getMessage()));
                }
                result.put("elapsed_ms", TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started));
                calls.put(e.getKey(), result);
            }
            admin.close(Duration.ofSeconds(2));
        }
        emit(Map.of("calls", calls));
    }

    private static <T> T wait(KafkaFuture<T> future, int timeoutMs) throws Exception {
        return ((Future<T>) future).get(timeoutMs, TimeUnit.MILLISECONDS);
    }
}
