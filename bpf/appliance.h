/* bpf/appliance.h: every struct, constant and map size shared between the
 * kernel programs (bpf/steering.c and the files it includes) and Python.
 *
 * appliance/steering/structs.py mirrors each struct with ctypes. The loader
 * passes the mirrors' sizes as -DAPPLIANCE_SIZEOF_<NAME>=<bytes> and
 * steering.c static-asserts them, so a layout drift fails the compile instead
 * of corrupting maps.
 *
 * Conventions: addresses are kept as the bytes the wire carries (network
 * order, IPv4 in the first word, the other words zero); ports are kept in
 * HOST byte order, the way sock_ops reports `local_port` and Python writes
 * integers. Keys carry no implicit padding, so a key built in Python hashes
 * the same as one built in the kernel.
 */
#ifndef APPLIANCE_H
#define APPLIANCE_H

/* Return codes of cgroup programs: 1 lets the syscall go on, 0 rejects it
 * (with -EPERM unless the program chose another errno via bpf_set_retval). */
#define SYS_PROCEED 1
#define SYS_REJECT 0

/* Address families and socket type, as the kernel ABI numbers them (named
 * here so the programs need no libc or socket headers). */
#define APPLIANCE_AF_INET 2
#define APPLIANCE_AF_INET6 10
#define APPLIANCE_SOCK_STREAM 1

/* Values of the `cgroups` map: what a cgroup (and its descendants, unless a
 * deeper cgroup says otherwise) is. */
#define APPLIANCE_ENROLLED 1
#define APPLIANCE_EXEMPT 2

/* Values of the `brokers` map: whether the proxy can reach that broker now.
 * Userspace sets them from its probes; an enrolled connect to a DOWN broker
 * is refused with ECONNREFUSED, as it would be without the appliance. */
#define APPLIANCE_BROKER_UP 1
#define APPLIANCE_BROKER_DOWN 2
/* Not a steered broker: an endpoint a steered broker named (in Metadata) outside
 * the networks the operator allows. An enrolled connect to it is refused
 * (it would reach that broker unseen); everyone else's is left alone. */
#define APPLIANCE_BROKER_OUTSIDE 3

/* Why a connect was refused (struct appliance_refusal.reason). */
#define APPLIANCE_REFUSED_UNENROLLED 1   /* no enrolled or exempt cgroup at or above the caller */
#define APPLIANCE_REFUSED_NO_PROXY 2     /* enrolled, but no proxy port configured yet */
#define APPLIANCE_REFUSED_BROKER_DOWN 3  /* enrolled, but the proxy cannot reach that broker */
#define APPLIANCE_REFUSED_FOREIGN_NS 4   /* enrolled, but in a network namespace where the proxy has no listener */
#define APPLIANCE_REFUSED_NO_RECORD 5    /* enrolled, but the record of the caller could not be stored */
#define APPLIANCE_REFUSED_OUTSIDE 6      /* enrolled, to a broker named outside the allowed networks */

/* Slots of the `health` array: helper calls that failed and events that lose
 * information, each counted so `appliance status` can show them. */
#define APPLIANCE_HEALTH_RINGBUF_DROP 0   /* refusal event not queued: ring buffer full */
#define APPLIANCE_HEALTH_STORE_FAIL 1     /* socket storage could not be created */
#define APPLIANCE_HEALTH_PEER_FAIL 2      /* hand-off record not written to conn_by_peer */
#define APPLIANCE_HEALTH_COUNTER_FAIL 3   /* per-cgroup counter entry could not be created */
#define APPLIANCE_HEALTH_CB_FLAGS_FAIL 4  /* close notification not armed on a steered socket */
#define APPLIANCE_HEALTH_RETVAL_FAIL 5    /* ECONNREFUSED could not be set (the caller saw EPERM) */
#define APPLIANCE_HEALTH_NO_LISTENER 6    /* a SYN to the proxy dropped: no proxy socket (appliance down) */
#define APPLIANCE_HEALTH_ASSIGN_FAIL 7    /* a SYN to the proxy dropped: bpf_sk_assign failed */
#define APPLIANCE_HEALTH_SLOTS 8

/* Keys of the `proxy_socks` sockmap: the proxy's listening sockets, two per
 * network namespace slot (slot 0: the appliance's own namespace; slots 1 to
 * APPLIANCE_MAX_NETNS: workloads' namespaces, values of `proxy_netns`). */
#define APPLIANCE_SOCK_KEY4 0
#define APPLIANCE_SOCK_KEY6 1
#define APPLIANCE_SOCK_KEY(slot, key) ((slot) * 2 + (key))

/* States of a socket's storage (struct appliance_sock.state). */
#define APPLIANCE_SOCK_CONNECTING 1   /* steered; record in .conn */
#define APPLIANCE_SOCK_ESTABLISHED 2  /* handed off under .peer; getpeername rewritten */
#define APPLIANCE_SOCK_CLOSED 3       /* hand-off record removed */

#define APPLIANCE_COMM_LEN 16

/* Map sizes and walk depth. Each may be overridden with a -D flag. */
#ifndef APPLIANCE_MAX_BROKERS
#define APPLIANCE_MAX_BROKERS 1024 /* steered broker addresses */
#endif
#ifndef APPLIANCE_MAX_CGROUPS
#define APPLIANCE_MAX_CGROUPS 4096 /* enrolled + exempt cgroups */
#endif
#ifndef APPLIANCE_MAX_CONNS
#define APPLIANCE_MAX_CONNS 65536 /* hand-off records not yet taken; LRU, and removed when the client socket closes */
#endif
#ifndef APPLIANCE_MAX_COUNTED
#define APPLIANCE_MAX_COUNTED 8192 /* cgroups with counters; LRU */
#endif
#ifndef APPLIANCE_REFUSAL_PAGES
#define APPLIANCE_REFUSAL_PAGES 64 /* ring buffer of refusal events, in pages (power of two) */
#endif
/* Workloads' network namespaces the proxy can listen in at once. Not a -D
 * knob: each slot has its own sk_lookup program in steering.c. */
#define APPLIANCE_MAX_NETNS 32
#ifndef APPLIANCE_MAX_CGROUP_DEPTH
#define APPLIANCE_MAX_CGROUP_DEPTH 32 /* ancestry levels examined; an enrollment deeper than this is not seen */
#endif

/* An endpoint: broker address (key of `brokers`), either end of a hand-off
 * key, the original destination of a steered connection.
 * An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is always stored as IPv4. */
struct appliance_addr {
	__u32 addr[4];  /* network byte order */
	__u16 port;     /* host byte order */
	__u16 family;   /* APPLIANCE_AF_INET or APPLIANCE_AF_INET6 */
};

/* The key of a hand-off record: the connection exactly as the proxy's
 * accepted socket sees it (peer, local address, network namespace). */
struct appliance_peer_key {
	struct appliance_addr client;  /* the workload's end */
	struct appliance_addr proxy;   /* the address it reached: the proxy's listener */
	__u64 netns_cookie;            /* bpf_get_netns_cookie / SO_NETNS_COOKIE */
};

/* Who connected to a steered broker: written by connect4/6 into the
 * socket's storage, copied by sock_ops to `conn_by_peer` under the
 * connection's peer key, taken (looked up and deleted) by the proxy on
 * accept, and deleted when the client socket closes if nobody took it. */
struct appliance_conn {
	__u64 cgroup_id;           /* the caller's own cgroup */
	__u64 enrolled_cgroup_id;  /* the deepest enrolled cgroup at or above it */
	__u64 connected_ns;        /* bpf_ktime_get_ns() at connect (CLOCK_MONOTONIC) */
	__u64 netns_cookie;        /* the caller's network namespace */
	struct appliance_addr broker;
	__u32 pid;                 /* thread id */
	__u32 tgid;                /* process id */
	__u32 uid;
	__u32 gid;
	char comm[APPLIANCE_COMM_LEN];
	__u32 _pad;
};

/* Per-socket state (value of the `socks` socket storage): dies with the
 * socket, so nothing here can leak or be found by another socket. */
struct appliance_sock {
	struct appliance_conn conn;
	struct appliance_peer_key peer;
	__u32 state;               /* APPLIANCE_SOCK_* */
	__u32 _pad;
};

/* A refused connect, sent to userspace on the `refusals` ring buffer. */
struct appliance_refusal {
	__u64 cgroup_id;
	struct appliance_addr dst;
	__u32 pid;
	__u32 tgid;
	__u32 uid;
	char comm[APPLIANCE_COMM_LEN];
	__u32 reason;              /* APPLIANCE_REFUSED_* */
	__u32 _pad;
};

/* Per-cgroup counters (value of `counters`). Steered connects are charged to
 * the enrolled cgroup that matched, refusals to the calling cgroup. */
struct appliance_counters {
	__u64 steered;
	__u64 refused;
};

/* The only entry of the `config` array. Until userspace writes it,
 * proxy_port is 0 and enrolled connects are refused (fail closed). */
struct appliance_config {
	__u32 proxy_ip4;     /* network byte order */
	__u32 proxy_ip6[4];  /* network byte order */
	__u16 proxy_port;    /* host byte order; the same port on both families */
	__u8 refuse_unenrolled;
	__u8 _pad;
	__u64 netns_cookie;  /* the proxy's own network namespace; workloads elsewhere are steered only where `proxy_netns` has a slot */
};

#endif /* APPLIANCE_H */
