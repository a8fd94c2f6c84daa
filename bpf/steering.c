/* bpf/steering.c: the kernel half of the appliance's data path, as the one
 * compilation unit the loader (appliance/steering/loader.py) hands to bcc.
 *
 * What it does: connects from workloads to a steered broker address are
 * rewritten to the appliance's proxy (enrolled cgroups), let through (exempt
 * cgroups, e.g. the proxy's own) or refused with ECONNREFUSED (everyone else,
 * unless configured otherwise). The record of who connected is handed to the
 * proxy through a map keyed by the client's endpoint, and the workload keeps
 * seeing the broker as its peer.
 *
 * Layout: the maps (their structs are in appliance.h), then one section per
 * attach-point family:
 *   sock_addr  sock4_connect, sock6_connect   cgroup/connect4|6
 *              sock4_getpeer, sock6_getpeer   cgroup/getpeername4|6
 *   sock_ops   sockops_estab                  sock_ops, ACTIVE_ESTABLISHED
 * The families are sections of this one file rather than #included files
 * because bcc 0.26 only turns functions of the main file into programs (and
 * only rewrites `map.lookup()` there); an included .c compiles but its
 * programs are "Unknown program".
 * Every program is attached once, with BPF_F_ALLOW_MULTI, at the cgroup v2
 * root, so it sees every process on the host. Cost: the connect programs do
 * one hash lookup for a destination that is not a steered broker, which is
 * nearly every connect on the host; the cgroup walk happens only for broker
 * destinations. sock_ops does one LRU lookup, which misses, per TCP
 * connection the host opens.
 *
 * Kernel assumptions (all verified on the project's 6.18): cgroup v2;
 * bpf_set_retval from cgroup sock_addr programs (5.18+);
 * bpf_get_current_ancestor_cgroup_id offered to sock_addr programs (recent
 * kernels only); bounded loops (5.3+); ring buffers (5.8+); lookup-and-delete
 * on LRU hash maps (5.14+, the proxy's take_connection).
 *
 * Required -D flags (the loader passes them): APPLIANCE_SIZEOF_ADDR, _CONN,
 * _REFUSAL, _COUNTERS, _CONFIG, the ctypes sizes of the Python mirrors.
 */
#include <linux/errno.h>
#include "appliance.h"

#if !defined(APPLIANCE_SIZEOF_ADDR) || !defined(APPLIANCE_SIZEOF_CONN) || \
	!defined(APPLIANCE_SIZEOF_REFUSAL) || !defined(APPLIANCE_SIZEOF_COUNTERS) || \
	!defined(APPLIANCE_SIZEOF_CONFIG)
#error "compile through appliance.steering.loader: it passes the Python mirrors' sizes as -DAPPLIANCE_SIZEOF_*"
#endif
_Static_assert(sizeof(struct appliance_addr) == APPLIANCE_SIZEOF_ADDR,
	       "struct appliance_addr differs from structs.Addr");
_Static_assert(sizeof(struct appliance_conn) == APPLIANCE_SIZEOF_CONN,
	       "struct appliance_conn differs from structs.Conn");
_Static_assert(sizeof(struct appliance_refusal) == APPLIANCE_SIZEOF_REFUSAL,
	       "struct appliance_refusal differs from structs.RefusalEvent");
_Static_assert(sizeof(struct appliance_counters) == APPLIANCE_SIZEOF_COUNTERS,
	       "struct appliance_counters differs from structs.Counters");
_Static_assert(sizeof(struct appliance_config) == APPLIANCE_SIZEOF_CONFIG,
	       "struct appliance_config differs from structs.Config");

/* bcc 0.26's helpers.h declares bpf_get_socket_cookie() as returning u32,
 * which would cut the 64-bit cookie; this declaration keeps all of it. */
static __u64 (*appliance_socket_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;

/* Steered broker endpoints (value unused, always 1). Written by userspace. */
BPF_HASH(brokers, struct appliance_addr, __u32, APPLIANCE_MAX_BROKERS);
/* cgroup v2 id -> APPLIANCE_ENROLLED | APPLIANCE_EXEMPT. Written by userspace;
 * a plain hash, never LRU: an enrollment must not be evicted. */
BPF_HASH(cgroups, __u64, __u32, APPLIANCE_MAX_CGROUPS);
/* socket cookie -> record, from connect until the handshake completes. */
BPF_TABLE("lru_hash", __u64, struct appliance_conn, conn_by_cookie, APPLIANCE_MAX_CONNS);
/* client local endpoint -> record, until the proxy takes it on accept. */
BPF_TABLE("lru_hash", struct appliance_addr, struct appliance_conn, conn_by_peer, APPLIANCE_MAX_CONNS);
/* socket cookie -> original destination, for getpeername in the workload. */
BPF_TABLE("lru_hash", __u64, struct appliance_addr, orig_by_cookie, APPLIANCE_MAX_CONNS);
/* cgroup id -> counters. */
BPF_TABLE("lru_hash", __u64, struct appliance_counters, counters, APPLIANCE_MAX_COUNTED);
/* The proxy's listener and the refusal policy (one entry). */
BPF_ARRAY(config, struct appliance_config, 1);
/* struct appliance_refusal events. */
BPF_RINGBUF_OUTPUT(refusals, APPLIANCE_REFUSAL_PAGES);

/* ==== sock_addr family: cgroup/connect4|6, cgroup/getpeername4|6 ==== */

static __always_inline struct appliance_config *config_get(void)
{
	int zero = 0;
	return config.lookup(&zero);
}

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
	if (!c)
		return;
	if (refused)
		__sync_fetch_and_add(&c->refused, 1);
	else
		__sync_fetch_and_add(&c->steered, 1);
}

/* Fail closed: the client's connect() returns ECONNREFUSED (a program that
 * just returns 0 would give EPERM, which clients report as a local
 * permission problem rather than "nothing listening there"). */
static __always_inline int refuse(struct appliance_addr *dst, __u64 cgroup_id)
{
	struct appliance_refusal ev;
	__builtin_memset(&ev, 0, sizeof(ev));
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	ev.cgroup_id = cgroup_id;
	ev.dst = *dst;
	ev.pid = (__u32)pid_tgid;
	ev.tgid = pid_tgid >> 32;
	ev.uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
	refusals.ringbuf_output(&ev, sizeof(ev), 0);
	count(cgroup_id, 1);
	bpf_set_retval(-ECONNREFUSED);
	return SYS_REJECT;
}

static __always_inline void remember(struct bpf_sock_addr *ctx, struct appliance_addr *dst,
				     __u64 cgroup_id, __u64 enrolled_id)
{
	struct appliance_conn rec;
	__builtin_memset(&rec, 0, sizeof(rec));
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	rec.cgroup_id = cgroup_id;
	rec.enrolled_cgroup_id = enrolled_id;
	rec.broker = *dst;
	rec.pid = (__u32)pid_tgid;
	rec.tgid = pid_tgid >> 32;
	rec.uid = (__u32)uid_gid;
	rec.gid = uid_gid >> 32;
	bpf_get_current_comm(&rec.comm, sizeof(rec.comm));
	__u64 cookie = appliance_socket_cookie(ctx);
	conn_by_cookie.update(&cookie, &rec);
}

/* The decision for a connect to *dst. Returns -1 to rewrite the destination
 * to the proxy (the caller does it, since the fields differ per family),
 * otherwise the program's return code. */
#define STEER_TO_PROXY (-1)
static __always_inline int decide(struct bpf_sock_addr *ctx, struct appliance_addr *dst,
				  struct appliance_config *cfg)
{
	if (ctx->type != APPLIANCE_SOCK_STREAM || !brokers.lookup(dst))
		return SYS_PROCEED;
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	__u64 matched = 0;
	__u32 kind = caller_kind(&matched);
	if (kind == APPLIANCE_EXEMPT)
		return SYS_PROCEED;
	if (kind == APPLIANCE_ENROLLED) {
		if (!cfg->proxy_port) /* no proxy configured: never direct */
			return refuse(dst, cgroup_id);
		remember(ctx, dst, cgroup_id, matched);
		count(matched, 0);
		return STEER_TO_PROXY;
	}
	if (cfg->refuse_unenrolled)
		return refuse(dst, cgroup_id);
	return SYS_PROCEED;
}

/* attach type: cgroup/connect4 */
int sock4_connect(struct bpf_sock_addr *ctx)
{
	struct appliance_config *cfg = config_get();
	if (!cfg)
		return SYS_PROCEED;
	struct appliance_addr dst = {};
	dst.family = APPLIANCE_AF_INET;
	dst.addr[0] = ctx->user_ip4;
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
 * and rewritten to the IPv4 proxy listener, still mapped. */
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
	dst.port = bpf_ntohs((__u16)ctx->user_port);
	if (mapped) {
		dst.family = APPLIANCE_AF_INET;
		dst.addr[0] = w3;
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

/* getpeername on a steered socket reports the broker, not the proxy. The
 * entry is written by sock_ops once the connection is established. */
/* attach type: cgroup/getpeername4 */
int sock4_getpeer(struct bpf_sock_addr *ctx)
{
	__u64 cookie = appliance_socket_cookie(ctx);
	struct appliance_addr *orig = orig_by_cookie.lookup(&cookie);
	if (orig && orig->family == APPLIANCE_AF_INET) {
		ctx->user_ip4 = orig->addr[0];
		ctx->user_port = bpf_htons(orig->port);
	}
	return SYS_PROCEED;
}

/* attach type: cgroup/getpeername6 */
int sock6_getpeer(struct bpf_sock_addr *ctx)
{
	__u64 cookie = appliance_socket_cookie(ctx);
	struct appliance_addr *orig = orig_by_cookie.lookup(&cookie);
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

/* Attach type: sock_ops (BPF_CGROUP_SOCK_OPS), acting on
 * BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB only; that callback is delivered without
 * any callback flag, and skops->local_port is in host byte order.
 *
 * Why it exists: the proxy's accepted socket has a different cookie from the
 * workload's socket, so the record written under the workload's cookie
 * cannot be found from the proxy side. Once the handshake completes the
 * client's local endpoint is known, and it is exactly the peer of the
 * proxy's accepted socket: the record moves there. The callback runs before
 * the client's final ACK is sent, so the record is in place before the proxy
 * can accept. */
int sockops_estab(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return SYS_PROCEED;
	__u64 cookie = appliance_socket_cookie(skops);
	struct appliance_conn *rec = conn_by_cookie.lookup(&cookie);
	if (!rec)
		return SYS_PROCEED;

	struct appliance_addr peer = {};
	peer.port = (__u16)skops->local_port;
	if (skops->family == APPLIANCE_AF_INET) {
		peer.family = APPLIANCE_AF_INET;
		peer.addr[0] = skops->local_ip4;
	} else {
		__u32 w0 = skops->local_ip6[0], w1 = skops->local_ip6[1];
		__u32 w2 = skops->local_ip6[2], w3 = skops->local_ip6[3];
		if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff)) {
			/* IPv4 over an AF_INET6 socket: the proxy sees an IPv4 peer */
			peer.family = APPLIANCE_AF_INET;
			peer.addr[0] = w3;
		} else {
			peer.family = APPLIANCE_AF_INET6;
			peer.addr[0] = w0;
			peer.addr[1] = w1;
			peer.addr[2] = w2;
			peer.addr[3] = w3;
		}
	}
	conn_by_peer.update(&peer, rec);
	orig_by_cookie.update(&cookie, &rec->broker);
	conn_by_cookie.delete(&cookie);
	return SYS_PROCEED;
}
