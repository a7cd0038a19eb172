/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * weft.h - the one header shared by Weft's eBPF programs and the agent.
 *
 * It holds the constants (ports, flags), the map keys and
 * values, and (for BPF builds only) the map definitions, so capture.bpf.c
 * and inbound.bpf.c declare identical maps and libbpf reuses the same pinned
 * map for both objects.  Every struct has a C# mirror in
 * agent/Capture/MapLayout.cs; tests/Capture/MapLayoutTests.cs checks sizes
 * and offsets against the BTF of the built objects.
 *
 * Bump WEFT_LAYOUT_VERSION whenever a struct or a map definition changes,
 * and say in BpfCapture which pinned maps an agent replaces when it finds
 * the previous version (docs/capture.md, "Upgrading the pinned layout").
 *
 * Version 2: the agent's own sockets are told apart by socket-local storage
 * (`agent_sockets`) instead of an SO_MARK; config lost socket_mark and
 * gained tunnel_port; the agent's ports are no longer exempt from capture.
 *
 * Kernel: sk_lookup and sockmap lookups from BPF need 5.9+; developed and
 * tested on 6.18.
 */
#ifndef WEFT_H
#define WEFT_H

#include <linux/types.h>

#define WEFT_LAYOUT_VERSION 2

/* defaults; the running values live in the config map */
#define WEFT_ADMIN_PORT		15000
#define WEFT_OUTBOUND_PORT	15001
#define WEFT_INBOUND_PORT	15006
#define WEFT_HBONE_PORT		15008
#define WEFT_METRICS_PORT	15020
#define WEFT_READY_PORT		15021

#define WEFT_MAX_EXCLUDED_PORTS	16
#define WEFT_MAX_PODS		4096
#define WEFT_MAX_CONNECTIONS	65536

/* weft_pod.flags */
#define WEFT_POD_FAIL_OPEN	(1u << 0)	/* no agent listener: let traffic through */
#define WEFT_POD_HAS_IPV4	(1u << 1)
#define WEFT_POD_HAS_IPV6	(1u << 2)

/* an IP address: IPv6 as is, IPv4 as ::ffff:a.b.c.d; network byte order */
struct weft_addr {
	__u8 bytes[16];
};

/* value of `enrolled` (key: netns cookie) and `pod_addrs` (key: weft_addr) */
struct weft_pod {
	__u32 ipv4;		/* network order; valid with WEFT_POD_HAS_IPV4 */
	__u32 flags;		/* WEFT_POD_* */
	__u8 ipv6[16];		/* network order; valid with WEFT_POD_HAS_IPV6 */
};

/* value of `pending_dst` (key: socket cookie) and `orig_dst` */
struct weft_orig_dst {
	__u8 addr[16];		/* AF_INET: first 4 bytes; network order */
	__u16 port;		/* host order */
	__u16 family;		/* AF_INET or AF_INET6, as the agent's listener sees it */
};

/* key of `orig_dst`: what the agent knows after accept() */
struct weft_conn_key {
	__u64 netns_cookie;
	__u16 client_port;	/* host order */
	__u16 family;		/* AF_INET or AF_INET6 */
	__u32 pad;		/* always zero */
};

/*
 * key of `deliveries`: a connection the agent opens to an app inside the
 * app's own pod, from the client's address (IP_TRANSPARENT), as the pod's
 * sk_lookup sees its SYN
 */
struct weft_delivery_key {
	struct weft_addr remote;	/* the client address the agent delivers from */
	struct weft_addr local;		/* the pod address */
	__u16 remote_port;	/* host order */
	__u16 local_port;	/* host order */
	__u32 pad;		/* always zero */
};

/* the one value of the `config` array */
struct weft_config {
	__u32 layout_version;	/* 0 means not configured yet: capture nothing */
	__u16 outbound_port;	/* agent listener on loopback inside each pod */
	__u16 inbound_port;
	__u16 tunnel_port;	/* HBONE: sk_lookup lets SYNs for it reach the agent's listener */
	__u16 pad;		/* always zero */
	/* never captured, either way; 0 = unused slot; never one of the agent's ports */
	__u16 excluded_ports[WEFT_MAX_EXCLUDED_PORTS];
};

#if defined(__bpf__)
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weft_config);
} config SEC(".maps");

/* pods whose outbound traffic is captured, by netns cookie */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_PODS);
	__type(key, __u64);
	__type(value, struct weft_pod);
} enrolled SEC(".maps");

/* pods whose inbound traffic is captured, by each of their addresses */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * WEFT_MAX_PODS);
	__type(key, struct weft_addr);
	__type(value, struct weft_pod);
} pod_addrs SEC(".maps");

/*
 * the agent's inbound listener in each pod, by pod address.  The kernel
 * removes an entry when its socket closes, so an entry also tells that the
 * agent is alive for that pod.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 2 * WEFT_MAX_PODS);
	__type(key, struct weft_addr);
	__type(value, __u64);
} inbound_listeners SEC(".maps");

/*
 * the sockets the agent opens inside pods, never captured.  The agent adds
 * each one from user space (key: its fd) before connect(); the storage lives
 * in the socket and dies with it.  Only a holder of this map's fd can write
 * it, so a pod cannot make its own sockets pass for the agent's, whatever
 * its capabilities inside its network namespace.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
} agent_sockets SEC(".maps");

/*
 * the agent's transparent deliveries between bind() and connect()'s end:
 * their SYNs carry the client's address, so sk_lookup tells them from the
 * client's own by this map, which only the agent writes.  Added without a
 * layout bump: a new map is created beside adopted ones, and older programs
 * never read it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEFT_MAX_CONNECTIONS);
	__type(key, struct weft_delivery_key);
	__type(value, __u32);
} deliveries SEC(".maps");

/* original destination between connect() and the SYN, by socket cookie */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEFT_MAX_CONNECTIONS);
	__type(key, __u64);
	__type(value, struct weft_orig_dst);
} pending_dst SEC(".maps");

/* original destination once the client port is known; the agent takes it */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEFT_MAX_CONNECTIONS);
	__type(key, struct weft_conn_key);
	__type(value, struct weft_orig_dst);
} orig_dst SEC(".maps");

static __always_inline const struct weft_config *weft_get_config(void)
{
	__u32 zero = 0;
	const struct weft_config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg || cfg->layout_version != WEFT_LAYOUT_VERSION)
		return 0;
	return cfg;
}

/* is port (host order) one the operator excluded from capture? */
static __always_inline int weft_port_excluded(const struct weft_config *cfg,
					      __u16 port)
{
	int i;

	for (i = 0; i < WEFT_MAX_EXCLUDED_PORTS; i++) {
		if (cfg->excluded_ports[i] == 0)
			break;
		if (cfg->excluded_ports[i] == port)
			return 1;
	}
	return 0;
}

/* BPF has no memcmp: compare 16-byte addresses a word at a time */
static __always_inline int weft_addr_equal(const void *a, const void *b)
{
	const __u32 *x = a, *y = b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/* ::ffff:a.b.c.d for an IPv4 address in network order */
static __always_inline void weft_addr_from_ipv4(struct weft_addr *a, __u32 ip4)
{
	__builtin_memset(a, 0, sizeof(*a));
	a->bytes[10] = 0xff;
	a->bytes[11] = 0xff;
	__builtin_memcpy(&a->bytes[12], &ip4, sizeof(ip4));
}
#endif /* __bpf__ */

#endif /* WEFT_H */
