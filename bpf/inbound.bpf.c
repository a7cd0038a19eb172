// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * inbound.bpf.c - inbound capture for enrolled pods.
 *
 * An sk_lookup program, attached to each enrolled pod's network namespace,
 * hands a TCP SYN for a pod address (pod_addrs) to the agent's in-pod
 * inbound listener (inbound_listeners, by pod address), unless it is one of
 * the agent's own deliveries to the app (`deliveries`, by 4-tuple), the
 * remote address is loopback or the pod's own address (the pod talking to
 * itself, or an agent delivering without transparency), the local port is the tunnel port
 * (HBONE: the normal lookup finds the agent's own 15008 listener), or the
 * operator excluded the port.  SYNs for the agent's other ports (15001,
 * 15006, 15000, 15020, 15021) are steered like any other: the agent then
 * sees a destination that is one of its own ports and refuses it, rather
 * than the app (or nothing) answering in plaintext around the mesh.
 * getsockname() on the accepted socket gives the original destination.
 *
 * Fail closed: with no listener the SYN is refused (SK_DROP), unless the pod
 * is fail open (SK_PASS, the app's own socket takes it).
 *
 * Keyed by pod address, not netns cookie: bpf_get_netns_cookie() is not
 * available to sk_lookup programs (checked on 6.18: "program of this type
 * cannot use helper bpf_get_netns_cookie"), and the address is what the
 * lookup carries.
 *
 * The agent delivers from the client's own address (IP_TRANSPARENT), so the
 * remote address no longer tells its SYNs apart, and neither does the
 * arriving device: a SYN to a local address loops through lo but carries
 * the address's device (eth0) as ingress_ifindex (measured on 6.18).  The
 * agent writes each delivery's exact 4-tuple into `deliveries` before its
 * connect() and deletes it after (docs/capture.md, "Inbound delivery keeps
 * the client's address").
 *
 * Kernel: 5.9+ (sk_lookup, bpf_link on a netns); tested on 6.18.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "weft.h"

#define AF_INET		2
#define AF_INET6	10

static __always_inline int addr_is_loopback(const struct weft_addr *a)
{
	const __u32 *w = (const __u32 *)a->bytes;

	if (w[0] != 0 || w[1] != 0)
		return 0;
	if (w[2] == bpf_htonl(0xffff))
		return (bpf_ntohl(w[3]) >> 24) == 127;
	return w[2] == 0 && w[3] == bpf_htonl(1);
}

static __always_inline int verdict(const struct weft_pod *pod)
{
	return (pod->flags & WEFT_POD_FAIL_OPEN) ? SK_PASS : SK_DROP;
}

SEC("sk_lookup")
int weft_sk_lookup(struct bpf_sk_lookup *ctx)
{
	const struct weft_config *cfg;
	const struct weft_pod *pod;
	struct weft_addr local, remote;
	struct bpf_sock *sk;
	struct weft_delivery_key delivery = {};
	__u32 l4, r4, l6[4], r6[4];
	__u16 rport;
	long err;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;

	/*
	 * read every address field up front, one 4-byte load each: loads
	 * behind a branch get merged into a moved ctx pointer, which the
	 * verifier refuses
	 */
	l4 = ctx->local_ip4;
	r4 = ctx->remote_ip4;
	l6[0] = ctx->local_ip6[0];
	l6[1] = ctx->local_ip6[1];
	l6[2] = ctx->local_ip6[2];
	l6[3] = ctx->local_ip6[3];
	r6[0] = ctx->remote_ip6[0];
	r6[1] = ctx->remote_ip6[1];
	r6[2] = ctx->remote_ip6[2];
	r6[3] = ctx->remote_ip6[3];
	rport = bpf_ntohs(ctx->remote_port);

	if (ctx->family == AF_INET) {
		weft_addr_from_ipv4(&local, l4);
		weft_addr_from_ipv4(&remote, r4);
	} else if (ctx->family == AF_INET6) {
		__builtin_memcpy(local.bytes, l6, sizeof(l6));
		__builtin_memcpy(remote.bytes, r6, sizeof(r6));
	} else {
		return SK_PASS;
	}

	pod = bpf_map_lookup_elem(&pod_addrs, &local);
	if (!pod)
		return SK_PASS;
	cfg = weft_get_config();
	if (!cfg)
		return SK_PASS;
	if (addr_is_loopback(&remote) ||
	    weft_addr_equal(&remote, &local))
		return SK_PASS;
	__builtin_memcpy(&delivery.remote, &remote, sizeof(remote));
	__builtin_memcpy(&delivery.local, &local, sizeof(local));
	delivery.remote_port = rport;
	delivery.local_port = (__u16)ctx->local_port;
	if (bpf_map_lookup_elem(&deliveries, &delivery))
		return SK_PASS;
	if (ctx->local_port == cfg->tunnel_port ||
	    weft_port_excluded(cfg, (__u16)ctx->local_port))
		return SK_PASS;

	sk = bpf_map_lookup_elem(&inbound_listeners, &local);
	if (!sk)
		return verdict(pod);
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return verdict(pod);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
