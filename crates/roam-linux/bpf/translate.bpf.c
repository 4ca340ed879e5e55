// SPDX-License-Identifier: MIT OR Apache-2.0
//
// roam's tc-BPF translator: the stateless original <-> current tuple rewrite of the
// kernel data plane (seed 000 ¶0047, FIG. 7), as two sched_cls programs attached in
// direct-action mode to an interface's clsact qdisc. Built by crates/roam-linux/build.rs
// (clang -O2 -g -target bpf) and loaded by crates/roam-linux/src/tcbpf.rs, which owns
// the maps' contents; the layouts of `struct flow_key`, `struct flow_val` and
// `struct counter` below are mirrored there (`FlowKey`, `FlowVal`, `Counter`).
//
// - `roam_egress` (clsact egress) looks the packet up in `roam_egress_flows` by what it
//   carries (saddr, sport, daddr, dport: the flow's *original* tuple, as the socket
//   sent it) and rewrites it to the value (the *current* tuple), or drops it if the
//   entry is held (seed 001 FIG. 3 step 305).
// - `roam_ingress` (clsact ingress) looks the packet up in `roam_ingress_flows` by what
//   arrives (the current tuple, remote end first) and rewrites it back to the original.
//
// Both directions are the same operation: "the packet's four fields become the value's
// four fields", so one function serves both and userspace decides what the keys are.
//
// Checksums (the helpers update them incrementally, RFC 1624):
// - IPv4 addresses: the IPv4 header checksum (bpf_l3_csum_replace) and the TCP/UDP one
//   with the pseudo header (bpf_l4_csum_replace, BPF_F_PSEUDO_HDR).
// - IPv6 addresses: only the TCP/UDP checksum (the pseudo header, RFC 8200 §8.1): one
//   bpf_csum_diff over the 16 bytes, then bpf_l4_csum_replace in "diff" mode.
// - Ports: the TCP/UDP checksum, not the pseudo header.
// - UDP over IPv4 may carry no checksum at all (zero, RFC 768): BPF_F_MARK_MANGLED_0
//   leaves a zero alone and writes a computed zero as 0xffff (the same value in ones'
//   complement). This is the case where nft's `udp sport set` goes wrong (nft.rs).
// - The helpers know the skb's checksum state: CHECKSUM_PARTIAL (what the local stack
//   sends on a device with offloads, veth included) gets only its pseudo-header sum
//   updated; CHECKSUM_COMPLETE (what many NICs deliver) gets skb->csum updated too. For
//   IPv6, bpf_l4_csum_replace with BPF_F_PSEUDO_HDR adjusts skb->csum as if a header
//   checksum had absorbed the address change (true for IPv4 only); storing the new
//   address with BPF_F_RECOMPUTE_CSUM adds the change back, so skb->csum stays right on
//   every kernel. (Linux 6.16 and the stable kernels since added BPF_F_IPV6 for this;
//   kernels without it refuse the flag.) Veth never delivers CHECKSUM_COMPLETE, so the
//   namespace tests cover CHECKSUM_PARTIAL and software checksums only.
//
// What it does not do (see tcbpf.rs): IP fragments (a non-first fragment carries no
// ports; all fragments pass untouched and are counted), IPv6 extension headers before
// TCP/UDP, ICMP errors quoting a translated flow, address-only entries, budgets, drain.
// It expects an Ethernet header (veth, Ethernet NICs).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// Keep in sync with tcbpf.rs.
#define ROAM_HOLD 1u

#define CNT_EGRESS 0
#define CNT_INGRESS 1
#define CNT_HOLD_DROPPED 2
#define CNT_ERRORS 3
#define CNT_FRAGMENTS 4
#define CNT_MAX 5

// A packet's flow as it is on the wire at this hook. IPv4 addresses take the first
// word of the arrays, the others are zero. 40 bytes, no implicit padding.
struct flow_key {
	__u8 family; // 4 or 6
	__u8 proto;  // IPPROTO_TCP or IPPROTO_UDP
	__u16 pad;
	__be16 sport;
	__be16 dport;
	__be32 saddr[4];
	__be32 daddr[4];
};

// What the packet becomes. 40 bytes.
struct flow_val {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u32 flags; // ROAM_HOLD
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

// max_entries is set by the loader (EbpfLoader::map_max_entries) before the maps are
// created; this is the value if it does not.
//
// BPF_F_NO_PREALLOC: a preallocated hash map reuses a replaced or deleted element for
// the next update at once, so a program still reading it (a packet in flight while
// userspace moves the flow) could see half of the next entry. Without preallocation
// an element is reused only after an RCU grace period, and programs run inside an RCU
// read section: a packet sees the old entry or the new one, whole. (It also costs no
// memory for the room not used.)
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} roam_egress_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} roam_ingress_flows SEC(".maps");

// Per CPU: no atomic on the packet path; the loader sums the CPUs.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, struct counter);
} roam_counters SEC(".maps");

static __always_inline void count(struct __sk_buff *skb, __u32 which)
{
	struct counter *c = bpf_map_lookup_elem(&roam_counters, &which);
	if (c) {
		c->packets += 1;
		c->bytes += skb->len;
	}
}

// `len` bytes at `off` (from the Ethernet header) in the linear part of the packet, or
// NULL. Headers are almost always there already; otherwise they are pulled in (which
// also makes them writable) and the packet pointers are read again.
static __always_inline void *header(struct __sk_buff *skb, __u32 off, __u32 len)
{
	void *p = (void *)(long)skb->data + off;
	if (p + len <= (void *)(long)skb->data_end)
		return p;
	if (bpf_skb_pull_data(skb, off + len) < 0)
		return NULL;
	p = (void *)(long)skb->data + off;
	if (p + len > (void *)(long)skb->data_end)
		return NULL;
	return p;
}

// Where the fields of the parsed packet are, from the Ethernet header.
struct layout {
	__u32 saddr; // offset of the source address (the destination follows it)
	__u32 l3csum; // IPv4 header checksum (unused for IPv6)
	__u32 l4; // TCP/UDP header
	__u32 l4csum; // TCP/UDP checksum
	__u64 l4flags; // BPF_F_MARK_MANGLED_0 for UDP
};

// Fills `k` and `at` from the packet; 1 if it is TCP or UDP we could key, 0 if it is
// anything else (passed untouched), -1 for a fragment.
static __always_inline int parse(struct __sk_buff *skb, struct flow_key *k, struct layout *at)
{
	__u8 proto;
	__u32 l4;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = header(skb, ETH_HLEN, sizeof(struct iphdr));
		if (!ip || ip->version != 4 || ip->ihl < 5)
			return 0;
		// MF set or a fragment offset: not a whole datagram. A non-first fragment has no
		// ports to key on, and translating only the first would break reassembly.
		if (ip->frag_off & bpf_htons(0x3fff))
			return -1;
		proto = ip->protocol;
		if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
			return 0;
		k->family = 4;
		k->saddr[0] = ip->saddr;
		k->daddr[0] = ip->daddr;
		at->saddr = ETH_HLEN + offsetof(struct iphdr, saddr);
		at->l3csum = ETH_HLEN + offsetof(struct iphdr, check);
		l4 = ETH_HLEN + ((__u32)ip->ihl & 0xf) * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = header(skb, ETH_HLEN, sizeof(struct ipv6hdr));
		if (!ip6)
			return 0;
		proto = ip6->nexthdr;
		if (proto == 44) // IPPROTO_FRAGMENT
			return -1;
		if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
			return 0;
		k->family = 6;
		__builtin_memcpy(k->saddr, &ip6->saddr, 16);
		__builtin_memcpy(k->daddr, &ip6->daddr, 16);
		at->saddr = ETH_HLEN + offsetof(struct ipv6hdr, saddr);
		at->l3csum = 0;
		l4 = ETH_HLEN + sizeof(struct ipv6hdr);
	} else {
		return 0;
	}
	// The ports: the first four bytes of both headers. (Reading them may have moved the
	// packet: nothing read before is used through a packet pointer after this.)
	__be16 *ports = header(skb, l4, 4);
	if (!ports)
		return 0;
	k->proto = proto;
	k->sport = ports[0];
	k->dport = ports[1];
	at->l4 = l4;
	if (proto == IPPROTO_TCP) {
		at->l4csum = l4 + 16; // offsetof(struct tcphdr, check)
		at->l4flags = 0;
	} else {
		at->l4csum = l4 + 6; // offsetof(struct udphdr, check)
		at->l4flags = BPF_F_MARK_MANGLED_0;
	}
	return 1;
}

static __always_inline int set_addr4(struct __sk_buff *skb, const struct layout *at, __u32 field,
				     __be32 from, __be32 to)
{
	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(skb, at->l4csum, from, to, at->l4flags | BPF_F_PSEUDO_HDR | 4))
		return -1;
	if (bpf_l3_csum_replace(skb, at->l3csum, from, to, 4))
		return -1;
	return bpf_skb_store_bytes(skb, field, &to, 4, 0);
}

static __always_inline int set_addr6(struct __sk_buff *skb, const struct layout *at, __u32 field,
				     __be32 *from, __be32 *to)
{
	if (from[0] == to[0] && from[1] == to[1] && from[2] == to[2] && from[3] == to[3])
		return 0;
	__s64 diff = bpf_csum_diff(from, 16, to, 16, 0);
	if (diff < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, at->l4csum, 0, diff, at->l4flags | BPF_F_PSEUDO_HDR))
		return -1;
	// See the top of the file: BPF_F_RECOMPUTE_CSUM keeps a CHECKSUM_COMPLETE skb right.
	return bpf_skb_store_bytes(skb, field, to, 16, BPF_F_RECOMPUTE_CSUM);
}

static __always_inline int set_port(struct __sk_buff *skb, const struct layout *at, __u32 field,
				    __be16 from, __be16 to)
{
	if (from == to)
		return 0;
	if (bpf_l4_csum_replace(skb, at->l4csum, from, to, at->l4flags | 2))
		return -1;
	return bpf_skb_store_bytes(skb, field, &to, 2, 0);
}

static __always_inline int translate(struct __sk_buff *skb, void *flows, __u32 counter, int egress)
{
	struct flow_key k = {};
	struct layout at = {};
	int parsed = parse(skb, &k, &at);
	if (parsed < 0) {
		count(skb, CNT_FRAGMENTS);
		return TC_ACT_UNSPEC;
	}
	if (parsed == 0)
		return TC_ACT_UNSPEC;
	struct flow_val *v = bpf_map_lookup_elem(flows, &k);
	if (!v)
		return TC_ACT_UNSPEC;
	if (egress && (v->flags & ROAM_HOLD)) {
		// TCP retransmits; a UDP sender's datagram is lost (as with nft's drop).
		count(skb, CNT_HOLD_DROPPED);
		return TC_ACT_SHOT;
	}
	// One copy of the entry for the whole rewrite (see BPF_F_NO_PREALLOC above).
	struct flow_val to = *v;
	int err;
	if (k.family == 4) {
		err = set_addr4(skb, &at, at.saddr, k.saddr[0], to.saddr[0]);
		if (!err)
			err = set_addr4(skb, &at, at.saddr + 4, k.daddr[0], to.daddr[0]);
	} else {
		err = set_addr6(skb, &at, at.saddr, k.saddr, to.saddr);
		if (!err)
			err = set_addr6(skb, &at, at.saddr + 16, k.daddr, to.daddr);
	}
	if (!err)
		err = set_port(skb, &at, at.l4, k.sport, to.sport);
	if (!err)
		err = set_port(skb, &at, at.l4 + 2, k.dport, to.dport);
	if (err) {
		// Half a rewrite must not leave: its checksums may not match any more.
		count(skb, CNT_ERRORS);
		return TC_ACT_SHOT;
	}
	count(skb, counter);
	return TC_ACT_UNSPEC;
}

// "classifier": the section name both aya and libbpf (bpftool) take for sched_cls.
SEC("classifier")
int roam_egress(struct __sk_buff *skb)
{
	return translate(skb, &roam_egress_flows, CNT_EGRESS, 1);
}

SEC("classifier")
int roam_ingress(struct __sk_buff *skb)
{
	return translate(skb, &roam_ingress_flows, CNT_INGRESS, 0);
}

// The kernel reads this only to allow GPL-only helpers, and none is used. (The
// peer-moved case would need bpf_fib_lookup, which is GPL-only: see tcbpf.rs.)
char LICENSE[] SEC("license") = "MIT OR Apache-2.0";
