package main

import (
	"fmt"
	"strings"
)

// The --hosts network: namespaces host0..host{N-1}, each with loopback up
// and an eth0 that is one end of a veth pair whose other end is a port of
// bridge kvmboxbr0 in the root namespace. host i has 10.77.0.{i+1}/24. The
// bridge has no address, so traffic stays among the namespaces, multicast
// included.
const (
	bridgeName = "kvmboxbr0"
	maxHosts   = 200
)

func hostName(i int) string { return fmt.Sprintf("host%d", i) }
func hostAddr(i int) string { return fmt.Sprintf("10.77.0.%d", i+1) }

// hostsEnv is what CMD is told about the hosts.
func hostsEnv(n int) []string {
	if n == 0 {
		return nil
	}
	names, addrs := make([]string, n), make([]string, n)
	for i := range n {
		names[i], addrs[i] = hostName(i), hostAddr(i)
	}
	return []string{
		"SFVMM_HOSTS=" + strings.Join(names, " "),
		"SFVMM_HOST_ADDRS=" + strings.Join(addrs, " "),
	}
}

// ipBatch is input for "ip [-n netns] -batch -": one process for many
// commands, which matters under TCG, where each exec of ip costs about a
// tenth of a second.
type ipBatch struct {
	netns string // "" for the root namespace
	lines []string
}

func (b ipBatch) args() []string {
	if b.netns == "" {
		return []string{"ip", "-batch", "-"}
	}
	return []string{"ip", "-n", b.netns, "-batch", "-"}
}

// hostsSetup returns the ip(8) batches that build the network for n hosts.
func hostsSetup(n int) []ipBatch {
	if n == 0 {
		return nil
	}
	root := ipBatch{lines: []string{
		// Without snooping the bridge floods multicast to every port:
		// the hosts' clones get their family's group with no IGMP
		// querier on the segment.
		"link add " + bridgeName + " type bridge mcast_snooping 0",
		"link set " + bridgeName + " up",
	}}
	var inside []ipBatch
	for i := range n {
		ns, port := hostName(i), fmt.Sprintf("kvmbox%d", i)
		root.lines = append(root.lines,
			"netns add "+ns,
			"link add "+port+" type veth peer name eth0 netns "+ns,
			"link set "+port+" master "+bridgeName,
			"link set "+port+" up",
		)
		inside = append(inside, ipBatch{netns: ns, lines: []string{
			"link set lo up",
			"addr add " + hostAddr(i) + "/24 dev eth0",
			"link set eth0 up",
		}})
	}
	return append([]ipBatch{root}, inside...)
}

// hostsTeardown undoes hostsSetup; deleting a namespace deletes its veth
// pair. Used only when running directly on the host.
func hostsTeardown(n int) ipBatch {
	var b ipBatch
	for i := range n {
		b.lines = append(b.lines, "netns delete "+hostName(i))
	}
	b.lines = append(b.lines, "link delete "+bridgeName)
	return b
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+=./:,@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}
