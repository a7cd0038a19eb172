// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * capture.bpf.c - outbound capture for enrolled pods.
 *
 * cgroup/connect4 and cgroup/connect6 rewrite a TCP connect() made inside an
 * enrolled pod's network namespace to the agent's listener on loopback
 * (127.0.0.1:15001, or [::1]:15001 for IPv6) and remember the original
 * destination under the socket cookie.  sockops, at TCP_CONNECT_CB (client
 * port chosen, SYN not sent yet), moves it to `orig_dst` keyed by
 * (netns cookie, client port, family), where the agent takes it after accept().
 *
 * Not captured: non-TCP sockets, loopback and unspecified destinations, the
 * pod's own addresses, ports the operator excluded, and the agent's own
 * sockets, which carry storage in `agent_sockets` that only the agent can
 * add.  A socket mark is no exemption: any process with CAP_NET_ADMIN in the
 * pod can set one.  Connects to the agent's ports on any other address are
 * captured like any other, so the agent sees (and refuses) them.  Fail closed: with no agent listener the rewritten connect is
 * refused.  A fail-open pod is not rewritten while its agent-alive marker
 * (its inbound listener in `inbound_listeners`) is absent.
 *
 * Kernel: 5.15+ (netns cookie in sockops since 5.15, in sock_addr since 5.7; sockhash lookup from
 * BPF; sk_storage in sock_addr programs); attached as bpf_links to a cgroup v2 directory; tested on 6.18.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/socket.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "weft.h"

#define AF_INET		2
#define AF_INET6	10
#define SOCK_STREAM	1

/* connect hooks: 1 lets connect() go on (rewritten or not) */
#define CONNECT_PROCEED	1

static __always_inline int ipv4_is_local_only(__u32 ip4)
{
	__u32 host = bpf_ntohl(ip4);

	return (host >> 24) == 127 || host == 0;
}

/* is the agent alive for this pod, i.e. is its inbound listener present? */
static __always_inline int agent_alive(const struct weft_pod *pod)
{
	struct weft_addr key;
	struct bpf_sock *sk = 0;

	if (pod->flags & WEFT_POD_HAS_IPV4) {
		weft_addr_from_ipv4(&key, pod->ipv4);
		sk = bpf_map_lookup_elem(&inbound_listeners, &key);
	}
	if (!sk && (pod->flags & WEFT_POD_HAS_IPV6)) {
		__builtin_memcpy(key.bytes, pod->ipv6, sizeof(key.bytes));
		sk = bpf_map_lookup_elem(&inbound_listeners, &key);
	}
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/*
 * The checks both families share.  Returns the pod when this socket's
 * connect() should go to the agent, 0 otherwise.
 */
static __always_inline const struct weft_pod *
should_capture(struct bpf_sock_addr *ctx, const struct weft_config **cfgp,
	       __u16 dport)
{
	const struct weft_config *cfg;
	const struct weft_pod *pod;
	__u64 netns;

	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 0;
	cfg = weft_get_config();
	if (!cfg)
		return 0;
	netns = bpf_get_netns_cookie(ctx);
	pod = bpf_map_lookup_elem(&enrolled, &netns);
	if (!pod)
		return 0;
	/* the agent's own sockets inside the pod: registered by the agent */
	if (bpf_sk_storage_get(&agent_sockets, ctx->sk, 0, 0))
		return 0;
	if (weft_port_excluded(cfg, dport))
		return 0;
	if ((pod->flags & WEFT_POD_FAIL_OPEN) && !agent_alive(pod))
		return 0;
	*cfgp = cfg;
	return pod;
}

static __always_inline void remember(struct bpf_sock_addr *ctx,
				     struct weft_orig_dst *dst)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);

	bpf_map_update_elem(&pending_dst, &cookie, dst, BPF_ANY);
}

SEC("cgroup/connect4")
int weft_connect4(struct bpf_sock_addr *ctx)
{
	const struct weft_config *cfg = 0;
	const struct weft_pod *pod;
	struct weft_orig_dst dst = {};
	__u32 ip4 = ctx->user_ip4;
	__u16 dport = bpf_ntohs(ctx->user_port);

	if (ipv4_is_local_only(ip4))
		return CONNECT_PROCEED;
	pod = should_capture(ctx, &cfg, dport);
	if (!pod || !cfg)
		return CONNECT_PROCEED;
	if ((pod->flags & WEFT_POD_HAS_IPV4) && ip4 == pod->ipv4)
		return CONNECT_PROCEED;

	__builtin_memcpy(dst.addr, &ip4, sizeof(ip4));
	dst.port = dport;
	dst.family = AF_INET;
	remember(ctx, &dst);

	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(cfg->outbound_port);
	return CONNECT_PROCEED;
}

SEC("cgroup/connect6")
int weft_connect6(struct bpf_sock_addr *ctx)
{
	const struct weft_config *cfg = 0;
	const struct weft_pod *pod;
	struct weft_orig_dst dst = {};
	__u32 ip6[4];
	__u16 dport = bpf_ntohs(ctx->user_port);
	int mapped;

	/* the context only allows 4-byte loads of the address */
	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
	mapped = ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0xffff);

	if (mapped) {
		/* a dual-stack socket to ::ffff:a.b.c.d is IPv4 on the wire */
		if (ipv4_is_local_only(ip6[3]))
			return CONNECT_PROCEED;
	} else {
		/* :: and ::1 */
		if (ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0 &&
		    (ip6[3] == 0 || ip6[3] == bpf_htonl(1)))
			return CONNECT_PROCEED;
	}

	pod = should_capture(ctx, &cfg, dport);
	if (!pod || !cfg)
		return CONNECT_PROCEED;

	if (mapped) {
		if ((pod->flags & WEFT_POD_HAS_IPV4) && ip6[3] == pod->ipv4)
			return CONNECT_PROCEED;
		__builtin_memcpy(dst.addr, &ip6[3], sizeof(ip6[3]));
		dst.family = AF_INET;
	} else {
		if ((pod->flags & WEFT_POD_HAS_IPV6) &&
		    weft_addr_equal(ip6, pod->ipv6))
			return CONNECT_PROCEED;
		__builtin_memcpy(dst.addr, ip6, sizeof(ip6));
		dst.family = AF_INET6;
	}
	dst.port = dport;
	remember(ctx, &dst);

	/* ::ffff:127.0.0.1 reaches the agent's IPv4 listener, ::1 its IPv6 one */
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = mapped ? bpf_htonl(0xffff) : 0;
	ctx->user_ip6[3] = mapped ? bpf_htonl(0x7f000001) : bpf_htonl(1);
	ctx->user_port = bpf_htons(cfg->outbound_port);
	return CONNECT_PROCEED;
}

SEC("sockops")
int weft_sockops(struct bpf_sock_ops *skops)
{
	struct weft_conn_key key = {};
	struct weft_orig_dst dst;
	struct weft_orig_dst *pending;
	__u64 cookie;

	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	pending = bpf_map_lookup_elem(&pending_dst, &cookie);
	if (!pending)
		return 1;
	__builtin_memcpy(&dst, pending, sizeof(dst));

	key.netns_cookie = bpf_get_netns_cookie(skops);
	key.client_port = (__u16)skops->local_port;	/* host order */
	key.family = dst.family;
	bpf_map_update_elem(&orig_dst, &key, &dst, BPF_ANY);
	bpf_map_delete_elem(&pending_dst, &cookie);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
