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

#define APPLIANCE_COMM_LEN 16

/* Map sizes and walk depth. Each may be overridden with a -D flag. */
#ifndef APPLIANCE_MAX_BROKERS
#define APPLIANCE_MAX_BROKERS 1024 /* steered broker addresses */
#endif
#ifndef APPLIANCE_MAX_CGROUPS
#define APPLIANCE_MAX_CGROUPS 4096 /* enrolled + exempt cgroups */
#endif
#ifndef APPLIANCE_MAX_CONNS
#define APPLIANCE_MAX_CONNS 65536 /* in-flight records; LRU, so old ones are evicted, never leaked */
#endif
#ifndef APPLIANCE_MAX_COUNTED
#define APPLIANCE_MAX_COUNTED 8192 /* cgroups with counters; LRU */
#endif
#ifndef APPLIANCE_REFUSAL_PAGES
#define APPLIANCE_REFUSAL_PAGES 64 /* ring buffer of refusal events, in pages (power of two) */
#endif
#ifndef APPLIANCE_MAX_CGROUP_DEPTH
#define APPLIANCE_MAX_CGROUP_DEPTH 32 /* ancestry levels examined; an enrollment deeper than this is not seen */
#endif

/* An endpoint: broker address (key of `brokers`), client local address (key
 * of `conn_by_peer`), original destination (value of `orig_by_cookie`).
 * An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is always stored as IPv4. */
struct appliance_addr {
	__u32 addr[4];  /* network byte order */
	__u16 port;     /* host byte order */
	__u16 family;   /* APPLIANCE_AF_INET or APPLIANCE_AF_INET6 */
};

/* Who connected to a steered broker: written by connect4/6 under the socket
 * cookie, re-keyed by sock_ops under the client's local endpoint, taken
 * (looked up and deleted) by the proxy on accept. */
struct appliance_conn {
	__u64 cgroup_id;           /* the caller's own cgroup */
	__u64 enrolled_cgroup_id;  /* the deepest enrolled cgroup at or above it */
	struct appliance_addr broker;
	__u32 pid;                 /* thread id */
	__u32 tgid;                /* process id */
	__u32 uid;
	__u32 gid;
	char comm[APPLIANCE_COMM_LEN];
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
};

#endif /* APPLIANCE_H */
