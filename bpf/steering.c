/* bpf/steering.c: the kernel half of the appliance's data path, as the one
 * compilation unit the loader (appliance/steering/loader.py) hands to bcc.
 *
 * What it does: connects from workloads to a steered broker address are
 * rewritten to the appliance's proxy (enrolled cgroups), let through (exempt
 * cgroups, e.g. the proxy's own) or refused with ECONNREFUSED (everyone else,
 * unless configured otherwise). The record of who connected is handed to the
 * proxy through a map keyed by the connection as the proxy sees it, and the
 * workload keeps seeing the broker as its peer. Connections addressed to the
 * proxy's listener are handed only to the proxy's own listening sockets; with
 * the proxy gone they are refused, whoever binds that port.
 *
 * Layout: the maps (their structs are in appliance.h), then one section per
 * attach-point family:
 *   sock_addr  sock4_connect, sock6_connect   cgroup/connect4|6
 *              sock4_getpeer, sock6_getpeer   cgroup/getpeername4|6
 *   sock_ops   sockops_estab                  sock_ops: ACTIVE_ESTABLISHED, STATE
 *   sk_lookup  sklookup_proxy                 sk_lookup, on the proxy's netns
 *              sklookup_ns00 .. sklookup_ns37 sk_lookup, one per workload netns slot
 * The families are sections of this one file rather than #included files
 * because bcc 0.26 only turns functions of the main file into programs (and
 * only rewrites `map.lookup()` there); an included .c compiles but its
 * programs are "Unknown program".
 * The cgroup programs are attached once, with BPF_F_ALLOW_MULTI, at the
 * cgroup v2 root, so they see every process on the host. Cost: the connect
 * programs do one hash lookup for a destination that is not a steered broker,
 * which is nearly every connect on the host; the cgroup walk happens only for
 * broker destinations. sock_ops does one socket-storage lookup, which misses,
 * per TCP connection the host opens. sk_lookup compares the destination of
 * each incoming SYN with the proxy's listener (two compares for other
 * traffic).
 *
 * Workloads in other network namespaces (containers): a connect rewritten to
 * 127.0.0.1 reaches the loopback of the caller's own namespace, so the proxy
 * keeps a listening socket inside each such namespace where enrolled
 * workloads live, and the namespace's cookie in `proxy_netns`. A namespace
 * with none is refused (APPLIANCE_REFUSED_FOREIGN_NS): one extra hash lookup,
 * only for enrolled connects to a broker from outside the proxy's namespace.
 * In each such namespace a sk_lookup program hands SYNs to the proxy's
 * address only to that namespace's proxy socket, as sklookup_proxy does in
 * the proxy's own. sk_lookup programs cannot call bpf_get_netns_cookie (6.18
 * verifier: "program of this type cannot use helper"), so a program cannot
 * tell which namespace it runs in: each slot has its own program with its
 * slot built in, and the loader links slot N's program to slot N's namespace.
 *
 * Kernel assumptions (all verified on the project's 6.18): cgroup v2;
 * bpf_set_retval from cgroup sock_addr programs (5.18+);
 * bpf_get_current_ancestor_cgroup_id offered to sock_addr programs (recent
 * kernels only); bounded loops (5.3+); ring buffers (5.8+); lookup-and-delete
 * on hash maps (5.14+, the proxy's take); socket storage from sock_addr and
 * sock_ops (5.10+); bpf_get_netns_cookie from sock_addr and sock_ops (5.15+);
 * sk_lookup with a SOCKMAP of listening sockets (5.10+); SK_DROP there makes
 * the kernel answer the SYN with a RST, so the client's connect() fails with
 * ECONNREFUSED at once.
 *
 * Required -D flags (the loader passes them): APPLIANCE_SIZEOF_ADDR,
 * _PEER_KEY, _CONN, _SOCK, _REFUSAL, _COUNTERS, _CONFIG, the ctypes sizes of
 * the Python mirrors.
 */
#include <linux/errno.h>
#include "appliance.h"

#if !defined(APPLIANCE_SIZEOF_ADDR) || !defined(APPLIANCE_SIZEOF_PEER_KEY) || \
	!defined(APPLIANCE_SIZEOF_CONN) || !defined(APPLIANCE_SIZEOF_SOCK) || \
	!defined(APPLIANCE_SIZEOF_REFUSAL) || !defined(APPLIANCE_SIZEOF_COUNTERS) || \
	!defined(APPLIANCE_SIZEOF_CONFIG)
#error "compile through appliance.steering.loader: it passes the Python mirrors' sizes as -DAPPLIANCE_SIZEOF_*"
#endif
_Static_assert(sizeof(struct appliance_addr) == APPLIANCE_SIZEOF_ADDR,
	       "struct appliance_addr differs from structs.Addr");
_Static_assert(sizeof(struct appliance_peer_key) == APPLIANCE_SIZEOF_PEER_KEY,
	       "struct appliance_peer_key differs from structs.PeerKey");
_Static_assert(sizeof(struct appliance_conn) == APPLIANCE_SIZEOF_CONN,
	       "struct appliance_conn differs from structs.Conn");
_Static_assert(sizeof(struct appliance_sock) == APPLIANCE_SIZEOF_SOCK,
	       "struct appliance_sock differs from structs.Sock");
_Static_assert(sizeof(struct appliance_refusal) == APPLIANCE_SIZEOF_REFUSAL,
	       "struct appliance_refusal differs from structs.RefusalEvent");
_Static_assert(sizeof(struct appliance_counters) == APPLIANCE_SIZEOF_COUNTERS,
	       "struct appliance_counters differs from structs.Counters");
_Static_assert(sizeof(struct appliance_config) == APPLIANCE_SIZEOF_CONFIG,
	       "struct appliance_config differs from structs.Config");

#define APPLIANCE_IPPROTO_TCP 6
#define APPLIANCE_TCP_CLOSE 7 /* enum tcp_state's TCP_CLOSE: the socket is gone for the network */
#define APPLIANCE_LOOPBACK4 0x7f000001 /* 127.0.0.1, host order */

/* Steered broker endpoints -> APPLIANCE_BROKER_UP | _DOWN. Written by userspace. */
BPF_HASH(brokers, struct appliance_addr, __u32, APPLIANCE_MAX_BROKERS);
/* cgroup v2 id -> APPLIANCE_ENROLLED | APPLIANCE_EXEMPT. Written by userspace;
 * a plain hash, never LRU: an enrollment must not be evicted. */
BPF_HASH(cgroups, __u64, __u32, APPLIANCE_MAX_CGROUPS);
/* Per-socket state of steered client sockets: freed with the socket. */
BPF_SK_STORAGE(socks, struct appliance_sock);
/* The connection as the proxy sees it -> record, until the proxy takes it on
 * accept or the client socket closes. LRU only as a last bound. */
BPF_TABLE("lru_hash", struct appliance_peer_key, struct appliance_conn, conn_by_peer, APPLIANCE_MAX_CONNS);
/* cgroup id -> counters. */
BPF_TABLE("lru_hash", __u64, struct appliance_counters, counters, APPLIANCE_MAX_COUNTED);
/* APPLIANCE_HEALTH_* slot -> count. */
BPF_ARRAY(health, __u64, APPLIANCE_HEALTH_SLOTS);
/* The proxy's listening sockets, APPLIANCE_SOCK_KEY(slot, _KEY4 | _KEY6). An
 * entry leaves when its socket closes, which is what makes a dead proxy refuse. */
BPF_TABLE("sockmap", __u32, int, proxy_socks, 2 * (1 + APPLIANCE_MAX_NETNS));
/* Network namespace cookie -> slot (1 .. APPLIANCE_MAX_NETNS), for every
 * workload namespace where the proxy listens and its slot's sk_lookup program
 * is linked. Written by userspace, and only once both are in place. */
BPF_HASH(proxy_netns, __u64, __u32, APPLIANCE_MAX_NETNS);
/* The proxy's listener and the refusal policy (one entry). */
BPF_ARRAY(config, struct appliance_config, 1);
/* struct appliance_refusal events. */
BPF_RINGBUF_OUTPUT(refusals, APPLIANCE_REFUSAL_PAGES);

static __always_inline struct appliance_config *config_get(void)
{
	int zero = 0;
	return config.lookup(&zero);
}

static __always_inline void note(int slot)
{
	__u64 *n = health.lookup(&slot);
	if (n)
		__sync_fetch_and_add(n, 1);
}

/* ==== sock_addr family: cgroup/connect4|6, cgroup/getpeername4|6 ==== */

/* The kind of the deepest cgroup at or above the caller that the `cgroups`
 * map knows, and that cgroup's id in *matched; 0 if none. Levels run from the
 * root (0) down; bpf_get_current_ancestor_cgroup_id() returns 0 past the
 * caller's own level, which ends the walk. Deepest wins, so an exempt child
 * of an enrolled cgroup goes direct and an enrolled child of an exempt one is
 * steered. */
static __always_inline __u32 caller_kind(__u64 *matched)
{
	__u32 kind = 0;
	for (int level = 0; level < APPLIANCE_MAX_CGROUP_DEPTH; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (id == 0)
			break;
		__u32 *found = cgroups.lookup(&id);
		if (found) {
			kind = *found;
			*matched = id;
		}
	}
	return kind;
}

static __always_inline void count(__u64 cgroup_id, int refused)
{
	struct appliance_counters zero = {};
	struct appliance_counters *c = counters.lookup_or_try_init(&cgroup_id, &zero);
	if (!c) {
		note(APPLIANCE_HEALTH_COUNTER_FAIL);
		return;
	}
	if (refused)
		__sync_fetch_and_add(&c->refused, 1);
	else
		__sync_fetch_and_add(&c->steered, 1);
}

/* Fail closed: the client's connect() returns ECONNREFUSED (a program that
 * just returns 0 would give EPERM, which clients report as a local
 * permission problem rather than "nothing listening there"). */
static __always_inline int refuse(struct appliance_addr *dst, __u64 cgroup_id, __u32 reason)
{
	struct appliance_refusal ev;
	__builtin_memset(&ev, 0, sizeof(ev));
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	ev.cgroup_id = cgroup_id;
	ev.dst = *dst;
	ev.pid = (__u32)pid_tgid;
	ev.tgid = pid_tgid >> 32;
	ev.uid = (__u32)bpf_get_current_uid_gid();
	ev.reason = reason;
	bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
	if (refusals.ringbuf_output(&ev, sizeof(ev), 0))
		note(APPLIANCE_HEALTH_RINGBUF_DROP);
	count(cgroup_id, 1);
	if (bpf_set_retval(-ECONNREFUSED))
		note(APPLIANCE_HEALTH_RETVAL_FAIL);
	return SYS_REJECT;
}

/* Record the caller in the socket's own storage; 0 if it cannot be stored. */
static __always_inline int remember(struct bpf_sock_addr *ctx, struct appliance_addr *dst,
				    __u64 cgroup_id, __u64 enrolled_id, __u64 netns)
{
	struct appliance_sock *st = socks.sk_storage_get(ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		note(APPLIANCE_HEALTH_STORE_FAIL);
		return 0;
	}
	__builtin_memset(st, 0, sizeof(*st));
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	st->conn.cgroup_id = cgroup_id;
	st->conn.enrolled_cgroup_id = enrolled_id;
	st->conn.connected_ns = bpf_ktime_get_ns();
	st->conn.netns_cookie = netns;
	st->conn.broker = *dst;
	st->conn.pid = (__u32)pid_tgid;
	st->conn.tgid = pid_tgid >> 32;
	st->conn.uid = (__u32)uid_gid;
	st->conn.gid = uid_gid >> 32;
	bpf_get_current_comm(&st->conn.comm, sizeof(st->conn.comm));
	st->state = APPLIANCE_SOCK_CONNECTING;
	return 1;
}

/* The state of the steered broker that a connect to *dst reaches, or NULL.
 * Any other loopback address (127.0.0.0/8) at a port where a broker is
 * steered on 127.0.0.1 counts as that broker: the kernel delivers it locally,
 * and a broker listening on a wildcard would take it. *dst becomes the
 * broker's own address, which the proxy connects to. */
static __always_inline __u32 *broker_state(struct appliance_addr *dst)
{
	__u32 *state = brokers.lookup(dst);
	if (state || dst->family != APPLIANCE_AF_INET)
		return state;
	if ((dst->addr[0] & bpf_htonl(0xff000000)) != bpf_htonl(0x7f000000))
		return 0;
	struct appliance_addr lo = *dst;
	lo.addr[0] = bpf_htonl(APPLIANCE_LOOPBACK4);
	state = brokers.lookup(&lo);
	if (state)
		*dst = lo;
	return state;
}

/* The decision for a connect to *dst (already turned into the address the
 * kernel will route to). Returns -1 to rewrite the destination to the proxy
 * (the caller does it, since the fields differ per family), otherwise the
 * program's return code. */
#define STEER_TO_PROXY (-1)
static __always_inline int decide(struct bpf_sock_addr *ctx, struct appliance_addr *dst,
				  struct appliance_config *cfg)
{
	if (ctx->type != APPLIANCE_SOCK_STREAM)
		return SYS_PROCEED;
	__u32 *state = broker_state(dst);
	if (!state)
		return SYS_PROCEED;
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	__u64 matched = 0;
	__u32 kind = caller_kind(&matched);
	if (kind == APPLIANCE_EXEMPT)
		return SYS_PROCEED;
	if (*state == APPLIANCE_BROKER_OUTSIDE) {
		/* Never steered; an enrolled workload must not reach it unseen. */
		if (kind == APPLIANCE_ENROLLED)
			return refuse(dst, cgroup_id, APPLIANCE_REFUSED_OUTSIDE);
		return SYS_PROCEED;
	}
	if (kind == APPLIANCE_ENROLLED) {
		if (!cfg->proxy_port) /* no proxy configured: never direct */
			return refuse(dst, cgroup_id, APPLIANCE_REFUSED_NO_PROXY);
		/* The proxy's address is that namespace's loopback: the proxy
		 * only where it listens, its own namespace or one in proxy_netns. */
		__u64 netns = bpf_get_netns_cookie(ctx);
		if (netns != cfg->netns_cookie && !proxy_netns.lookup(&netns))
			return refuse(dst, cgroup_id, APPLIANCE_REFUSED_FOREIGN_NS);
		if (*state == APPLIANCE_BROKER_DOWN)
			return refuse(dst, cgroup_id, APPLIANCE_REFUSED_BROKER_DOWN);
		if (!remember(ctx, dst, cgroup_id, matched, netns))
			return refuse(dst, cgroup_id, APPLIANCE_REFUSED_NO_RECORD);
		count(matched, 0);
		return STEER_TO_PROXY;
	}
	if (cfg->refuse_unenrolled)
		return refuse(dst, cgroup_id, APPLIANCE_REFUSED_UNENROLLED);
	return SYS_PROCEED;
}

/* connect(0.0.0.0) goes to the socket's bound address, or 127.0.0.1 when it
 * has none (the kernel's route lookup does so); the program sees 0.0.0.0. */
static __always_inline __u32 routed4(struct bpf_sock_addr *ctx, __u32 ip4)
{
	if (ip4 != 0)
		return ip4;
	__u32 bound = ctx->sk->src_ip4;
	return bound ? bound : bpf_htonl(APPLIANCE_LOOPBACK4);
}

/* attach type: cgroup/connect4 */
int sock4_connect(struct bpf_sock_addr *ctx)
{
	struct appliance_config *cfg = config_get();
	if (!cfg)
		return SYS_PROCEED;
	struct appliance_addr dst = {};
	dst.family = APPLIANCE_AF_INET;
	dst.addr[0] = routed4(ctx, ctx->user_ip4);
	dst.port = bpf_ntohs((__u16)ctx->user_port);
	int verdict = decide(ctx, &dst, cfg);
	if (verdict != STEER_TO_PROXY)
		return verdict;
	ctx->user_ip4 = cfg->proxy_ip4;
	ctx->user_port = bpf_htons(cfg->proxy_port);
	return SYS_PROCEED;
}

/* An AF_INET6 socket reaches IPv4 brokers through IPv4-mapped addresses
 * (Java clients do so by default): such a destination is looked up as IPv4
 * and rewritten to the IPv4 proxy listener, still mapped. [::] goes to ::1,
 * or to 127.0.0.1 from a socket bound to an IPv4-mapped address
 * (tcp_v6_connect does so); ::ffff:0.0.0.0 is 0.0.0.0 over IPv4. */
/* attach type: cgroup/connect6 */
int sock6_connect(struct bpf_sock_addr *ctx)
{
	struct appliance_config *cfg = config_get();
	if (!cfg)
		return SYS_PROCEED;
	struct appliance_addr dst = {};
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1];
	__u32 w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
	int mapped = w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
	if (w0 == 0 && w1 == 0 && w2 == 0 && w3 == 0) { /* [::] */
		struct bpf_sock *sk = ctx->sk;
		if (sk->src_ip6[0] == 0 && sk->src_ip6[1] == 0 && sk->src_ip6[2] == bpf_htonl(0x0000ffff)) {
			mapped = 1;
		} else {
			w3 = bpf_htonl(1);
		}
	}
	dst.port = bpf_ntohs((__u16)ctx->user_port);
	if (mapped) {
		dst.family = APPLIANCE_AF_INET;
		dst.addr[0] = routed4(ctx, w3);
	} else {
		dst.family = APPLIANCE_AF_INET6;
		dst.addr[0] = w0;
		dst.addr[1] = w1;
		dst.addr[2] = w2;
		dst.addr[3] = w3;
	}
	int verdict = decide(ctx, &dst, cfg);
	if (verdict != STEER_TO_PROXY)
		return verdict;
	if (mapped) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = cfg->proxy_ip4;
	} else {
		ctx->user_ip6[0] = cfg->proxy_ip6[0];
		ctx->user_ip6[1] = cfg->proxy_ip6[1];
		ctx->user_ip6[2] = cfg->proxy_ip6[2];
		ctx->user_ip6[3] = cfg->proxy_ip6[3];
	}
	ctx->user_port = bpf_htons(cfg->proxy_port);
	return SYS_PROCEED;
}

static __always_inline struct appliance_addr *steered_broker(struct bpf_sock_addr *ctx)
{
	struct appliance_sock *st = socks.sk_storage_get(ctx->sk, 0, 0);
	if (!st || st->state < APPLIANCE_SOCK_ESTABLISHED)
		return 0;
	return &st->conn.broker;
}

/* getpeername on a steered socket reports the broker, not the proxy. */
/* attach type: cgroup/getpeername4 */
int sock4_getpeer(struct bpf_sock_addr *ctx)
{
	struct appliance_addr *orig = steered_broker(ctx);
	if (orig && orig->family == APPLIANCE_AF_INET) {
		ctx->user_ip4 = orig->addr[0];
		ctx->user_port = bpf_htons(orig->port);
	}
	return SYS_PROCEED;
}

/* attach type: cgroup/getpeername6 */
int sock6_getpeer(struct bpf_sock_addr *ctx)
{
	struct appliance_addr *orig = steered_broker(ctx);
	if (!orig)
		return SYS_PROCEED;
	if (orig->family == APPLIANCE_AF_INET) { /* an IPv4 broker reached via a mapped address */
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = orig->addr[0];
	} else {
		ctx->user_ip6[0] = orig->addr[0];
		ctx->user_ip6[1] = orig->addr[1];
		ctx->user_ip6[2] = orig->addr[2];
		ctx->user_ip6[3] = orig->addr[3];
	}
	ctx->user_port = bpf_htons(orig->port);
	return SYS_PROCEED;
}

/* ==== sock_ops family ==== */

/* One end of a sock_ops connection; an IPv4-mapped address becomes IPv4, as
 * the proxy's IPv4 listener sees it. Ports come in host order. */
static __always_inline void endpoint(struct appliance_addr *a, __u32 family, __u32 ip4, __u32 *ip6, __u32 port)
{
	a->port = (__u16)port;
	if (family == APPLIANCE_AF_INET) {
		a->family = APPLIANCE_AF_INET;
		a->addr[0] = ip4;
		return;
	}
	__u32 w0 = ip6[0], w1 = ip6[1], w2 = ip6[2], w3 = ip6[3];
	if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff)) {
		a->family = APPLIANCE_AF_INET;
		a->addr[0] = w3;
	} else {
		a->family = APPLIANCE_AF_INET6;
		a->addr[0] = w0;
		a->addr[1] = w1;
		a->addr[2] = w2;
		a->addr[3] = w3;
	}
}

static __always_inline int is_proxy(struct appliance_addr *a, struct appliance_config *cfg)
{
	if (a->port != cfg->proxy_port)
		return 0;
	if (a->family == APPLIANCE_AF_INET)
		return a->addr[0] == cfg->proxy_ip4;
	return a->addr[0] == cfg->proxy_ip6[0] && a->addr[1] == cfg->proxy_ip6[1] &&
	       a->addr[2] == cfg->proxy_ip6[2] && a->addr[3] == cfg->proxy_ip6[3];
}

/* The proxy's accepted socket has a different cookie from the workload's
 * socket, so the record cannot stay with the client socket alone. Once the
 * handshake completes the connection is fully known, and exactly as the
 * proxy's accepted socket will see it: peer, local address, network
 * namespace. The record is copied there. The callback runs before the
 * client's final ACK is sent, so the record is in place before the proxy can
 * accept. The socket is then asked for state callbacks, so its record goes
 * when it closes and no later socket with the same addresses can find it. */
static __always_inline void hand_off(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return;
	struct appliance_sock *st = socks.sk_storage_get(sk, 0, 0);
	if (!st || st->state != APPLIANCE_SOCK_CONNECTING)
		return;
	struct appliance_config *cfg = config_get();
	if (!cfg)
		return;
	struct appliance_peer_key key = {};
	endpoint(&key.client, skops->family, skops->local_ip4, skops->local_ip6, skops->local_port);
	/* remote_port holds the network-order port in its upper half */
	endpoint(&key.proxy, skops->family, skops->remote_ip4, skops->remote_ip6, bpf_ntohl(skops->remote_port));
	if (!is_proxy(&key.proxy, cfg)) { /* reconnected elsewhere after the steered attempt */
		st->state = APPLIANCE_SOCK_CLOSED;
		return;
	}
	key.netns_cookie = bpf_get_netns_cookie(skops);
	st->peer = key;
	st->state = APPLIANCE_SOCK_ESTABLISHED;
	if (conn_by_peer.update(&key, &st->conn))
		note(APPLIANCE_HEALTH_PEER_FAIL);
	if (bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG))
		note(APPLIANCE_HEALTH_CB_FLAGS_FAIL);
}

static __always_inline void forget(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return;
	struct appliance_sock *st = socks.sk_storage_get(sk, 0, 0);
	if (!st || st->state != APPLIANCE_SOCK_ESTABLISHED)
		return;
	conn_by_peer.delete(&st->peer); /* ENOENT when the proxy took it: the usual case */
	st->state = APPLIANCE_SOCK_CLOSED;
}

/* Attach type: sock_ops (BPF_CGROUP_SOCK_OPS). ACTIVE_ESTABLISHED is
 * delivered without any callback flag; STATE only for sockets that asked
 * (steered ones); skops->local_port is in host byte order. */
int sockops_estab(struct bpf_sock_ops *skops)
{
	if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		hand_off(skops);
	else if (skops->op == BPF_SOCK_OPS_STATE_CB && skops->args[1] == APPLIANCE_TCP_CLOSE)
		forget(skops);
	return SYS_PROCEED;
}

/* ==== sk_lookup family ==== */

/* A SYN to the proxy's listener address goes to the proxy's own socket of
 * this slot's namespace from `proxy_socks`, whoever else has bound that port;
 * with the entry gone (the socket closed, because the appliance stopped or
 * died) it is dropped, which answers the SYN with a RST: ECONNREFUSED. */
static __always_inline int hand_to_proxy(struct bpf_sk_lookup *ctx, __u32 slot)
{
	if (ctx->protocol != APPLIANCE_IPPROTO_TCP)
		return SK_PASS;
	struct appliance_config *cfg = config_get();
	if (!cfg || !cfg->proxy_port || ctx->local_port != cfg->proxy_port)
		return SK_PASS;
	__u32 key;
	if (ctx->family == APPLIANCE_AF_INET && ctx->local_ip4 == cfg->proxy_ip4) {
		key = APPLIANCE_SOCK_KEY(slot, APPLIANCE_SOCK_KEY4);
	} else if (ctx->family == APPLIANCE_AF_INET6 && ctx->local_ip6[0] == cfg->proxy_ip6[0] &&
		   ctx->local_ip6[1] == cfg->proxy_ip6[1] && ctx->local_ip6[2] == cfg->proxy_ip6[2] &&
		   ctx->local_ip6[3] == cfg->proxy_ip6[3]) {
		key = APPLIANCE_SOCK_KEY(slot, APPLIANCE_SOCK_KEY6);
	} else {
		return SK_PASS;
	}
	struct bpf_sock *sk = (struct bpf_sock *)proxy_socks.lookup(&key);
	if (!sk) {
		note(APPLIANCE_HEALTH_NO_LISTENER);
		return SK_DROP;
	}
	long err = bpf_sk_assign(ctx, sk, BPF_SK_LOOKUP_F_NO_REUSEPORT);
	bpf_sk_release(sk);
	if (err) {
		note(APPLIANCE_HEALTH_ASSIGN_FAIL);
		return SK_DROP;
	}
	return SK_PASS;
}

/* Attach type: sk_lookup (BPF_SK_LOOKUP), linked to the proxy's network
 * namespace; runs for every SYN that namespace receives, before any listener
 * is looked up. */
int sklookup_proxy(struct bpf_sk_lookup *ctx)
{
	return hand_to_proxy(ctx, 0);
}

/* Attach type: sk_lookup, one program per workload namespace slot, named
 * sklookup_ns<row><column> in octal digits (slot = 1 + 8 * row + column), the
 * loader links it to that slot's namespace. */
#define SKLOOKUP_SLOT(row, column) \
	int sklookup_ns##row##column(struct bpf_sk_lookup *ctx) { return hand_to_proxy(ctx, 1 + 8 * row + column); }
#define SKLOOKUP_ROW(row) \
	SKLOOKUP_SLOT(row, 0) SKLOOKUP_SLOT(row, 1) SKLOOKUP_SLOT(row, 2) SKLOOKUP_SLOT(row, 3) \
	SKLOOKUP_SLOT(row, 4) SKLOOKUP_SLOT(row, 5) SKLOOKUP_SLOT(row, 6) SKLOOKUP_SLOT(row, 7)
SKLOOKUP_ROW(0)
SKLOOKUP_ROW(1)
SKLOOKUP_ROW(2)
SKLOOKUP_ROW(3)
_Static_assert(APPLIANCE_MAX_NETNS == 4 * 8, "one SKLOOKUP_ROW per 8 slots of APPLIANCE_MAX_NETNS");
