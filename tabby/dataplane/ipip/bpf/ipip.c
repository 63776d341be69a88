// SPDX-License-Identifier: Apache-2.0
/*
 * Tabby IP-in-IP (IP protocol 4) for kernels without the ipip module, as two tc (clsact)
 * programs on the node's underlay interface. On the wire this is what a Linux tunl0 sends
 * and accepts: one outer IPv4 header, no options, in front of the inner IPv4 packet.
 *
 *   ipip_encap  (egress)  inner dst in ipip_routes (LPM: remote block -> remote node IP,
 *                         local IP)  =>  push an outer header to that node.
 *   ipip_decap  (ingress) protocol 4 to this node, IHL 5, not a fragment, from an address
 *                         in ipip_nodes  =>  strip the outer header, the kernel routes the
 *                         inner packet. From any other address: drop and count.
 *
 * The user space side (tabby/dataplane/ipip/) owns the maps; the programs hold no state
 * of their own. No GPL-only helper is used.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7) /* Linux 6.3+; older headers lack it */
#endif

#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define ECN_MASK 3
#define ECN_ECT0 2
#define ECN_CE 3
#define OUTER_LEN ((int)sizeof(struct iphdr))

/* ipip_config flags */
#define CFG_DECAP 1 /* strip the outer header (BPF path); else only filter (kernel tunl0 path) */

/* ipip_counters indexes: keep in step with COUNTERS in tabby/dataplane/ipip/bpf_maps.py */
enum {
	C_ENCAP = 0,          /* packets encapsulated */
	C_DECAP,              /* packets decapsulated (or passed to tunl0 in filter mode) */
	C_DROP_UNKNOWN_SRC,   /* protocol 4 to this node from an address that is not a node */
	C_DROP_BAD_INNER,     /* inner packet is not a plain IPv4 header */
	C_DROP_ECN,           /* outer CE over a not-ECT inner packet (RFC 6040) */
	C_ENCAP_ERROR,        /* bpf_skb_adjust_room refused to grow the packet */
	C_DECAP_ERROR,        /* bpf_skb_adjust_room refused to shrink the packet */
	C_MAX,
};

struct lpm_key {
	__u32 prefixlen;
	__be32 addr;
};

struct route_val {
	__be32 remote; /* outer destination: the remote node's underlay address */
	__be32 local;  /* outer source: this node's underlay address */
};

struct config {
	__be32 local; /* this node's underlay address: decap only what is sent to it */
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_key);
	__type(value, struct route_val);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ipip_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ipip_nodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config);
	__uint(max_entries, 1);
} ipip_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, C_MAX);
} ipip_counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&ipip_counters, &idx);

	if (c)
		*c += 1;
}

static __always_inline __u16 ipv4_csum(const struct iphdr *iph)
{
	const __u16 *w = (const __u16 *)iph;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*iph) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Make sure the first `len` bytes are in the linear area (GSO/GRO packets may not be). */
static __always_inline int linear(struct __sk_buff *skb, __u32 len)
{
	if ((void *)(long)skb->data + len <= (void *)(long)skb->data_end)
		return 0;
	if (skb->len < len)
		return -1;
	return bpf_skb_pull_data(skb, len);
}

SEC("tc")
int ipip_encap(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (linear(skb, ETH_HLEN + sizeof(struct iphdr)))
		return TC_ACT_OK;

	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr *in = data + ETH_HLEN;

	if ((void *)(in + 1) > end)
		return TC_ACT_OK;

	struct lpm_key key = { .prefixlen = 32, .addr = in->daddr };
	struct route_val *rv = bpf_map_lookup_elem(&ipip_routes, &key);

	if (!rv)
		return TC_ACT_OK; /* not to a remote IPIP block: leave it alone */

	/* Outer header as tunl0 builds it: TTL and DF from the inner packet, DSCP 0, ECN
	 * copied except CE, which becomes ECT(0) (RFC 6040 normal mode). */
	__u8 ecn = in->tos & ECN_MASK;
	struct iphdr out = {
		.version = 4,
		.ihl = 5,
		.tos = ecn == ECN_CE ? ECN_ECT0 : ecn,
		.id = (__u16)bpf_get_prandom_u32(),
		.frag_off = in->frag_off & bpf_htons(IP_DF),
		.ttl = in->ttl,
		.protocol = IPPROTO_IPIP,
		.saddr = rv->local,
		.daddr = rv->remote,
	};
	__u32 inner_len = skb->len - ETH_HLEN;

	/* A GSO packet can exceed 64 KiB minus the outer header (BIG TCP): such a length does
	 * not fit tot_len, and segmentation rewrites it per segment anyway. */
	out.tot_len = bpf_htons(inner_len + OUTER_LEN > 0xffff ? 0xffff : inner_len + OUTER_LEN);
	out.check = ipv4_csum(&out);

	/* FIXED_GSO: segments grow by 20 bytes; the route MTU (underlay - 20) left room. */
	if (bpf_skb_adjust_room(skb, OUTER_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO)) {
		count(C_ENCAP_ERROR);
		return TC_ACT_SHOT; /* never let a workload packet out unencapsulated */
	}
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &out, sizeof(out), 0)) {
		count(C_ENCAP_ERROR);
		return TC_ACT_SHOT;
	}
	count(C_ENCAP);
	return TC_ACT_OK;
}

SEC("tc")
int ipip_decap(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (linear(skb, ETH_HLEN + sizeof(struct iphdr)))
		return TC_ACT_OK;

	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct iphdr *out = data + ETH_HLEN;

	if ((void *)(out + 1) > end)
		return TC_ACT_OK;
	if (out->protocol != IPPROTO_IPIP || out->version != 4 || out->ihl != 5 ||
	    (out->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return TC_ACT_OK; /* not ours to handle: the kernel decides */

	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&ipip_config, &zero);

	if (!cfg || out->daddr != cfg->local)
		return TC_ACT_OK;

	__be32 saddr = out->saddr;

	if (!bpf_map_lookup_elem(&ipip_nodes, &saddr)) {
		count(C_DROP_UNKNOWN_SRC);
		return TC_ACT_SHOT;
	}
	if (!(cfg->flags & CFG_DECAP)) {
		count(C_DECAP);
		return TC_ACT_OK; /* the kernel's tunl0 takes it from here */
	}

	if (linear(skb, ETH_HLEN + 2 * sizeof(struct iphdr))) {
		count(C_DROP_BAD_INNER);
		return TC_ACT_SHOT;
	}
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	out = data + ETH_HLEN;
	struct iphdr *in = (void *)(out + 1);

	if ((void *)(in + 1) > end || in->version != 4 || in->ihl < 5) {
		count(C_DROP_BAD_INNER);
		return TC_ACT_SHOT;
	}

	/* RFC 6040 decapsulation: CE on the outer header must survive. */
	if ((out->tos & ECN_MASK) == ECN_CE) {
		__u8 inner_ecn = in->tos & ECN_MASK;

		if (inner_ecn == 0) {
			count(C_DROP_ECN);
			return TC_ACT_SHOT;
		}
		if (inner_ecn != ECN_CE) {
			__u16 old = *(__u16 *)in; /* version/ihl + tos, as a checksum word */
			__u8 tos = in->tos | ECN_CE;

			if (bpf_skb_store_bytes(skb, ETH_HLEN + OUTER_LEN + 1, &tos, 1, 0)) {
				count(C_DECAP_ERROR);
				return TC_ACT_SHOT;
			}
			data = (void *)(long)skb->data;
			end = (void *)(long)skb->data_end;
			in = data + ETH_HLEN + OUTER_LEN;
			if ((void *)(in + 1) > end)
				return TC_ACT_SHOT;
			__u16 new = *(__u16 *)in;

			bpf_l3_csum_replace(skb, ETH_HLEN + OUTER_LEN + __builtin_offsetof(struct iphdr, check),
					    old, new, 2);
		}
	}

	/* DECAP_L3_IPV4 also clears the GSO tunnel bits of an encapsulated GSO packet, so it
	 * is forwarded like any other; kernels before 6.3 refuse the flag, so fall back. */
	if (bpf_skb_adjust_room(skb, -OUTER_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4) &&
	    bpf_skb_adjust_room(skb, -OUTER_LEN, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO)) {
		count(C_DECAP_ERROR);
		return TC_ACT_SHOT;
	}
	count(C_DECAP);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "Apache-2.0";
