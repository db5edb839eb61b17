package vmm

import "testing"

func TestParseNotify(t *testing.T) {
	for _, n := range []Notify{NotifyAuto, NotifyIOEventFD, NotifyExit} {
		got, err := ParseNotify(n.String())
		if err != nil || got != n {
			t.Errorf("ParseNotify(%q) = %v, %v; want %v", n.String(), got, err, n)
		}
	}
	for _, s := range []string{"", "Exit", "ioevent", "auto "} {
		if _, err := ParseNotify(s); err == nil {
			t.Errorf("ParseNotify(%q) took it", s)
		}
	}
}

// Auto serves notifications on the vCPU's thread unless the host has a
// CPU to spare for a device thread; an explicit choice stands.
func TestNotifySettle(t *testing.T) {
	for _, c := range []struct {
		n               Notify
		hostCPUs, vcpus int
		want            Notify
	}{
		{NotifyAuto, 1, 1, NotifyExit},
		{NotifyAuto, 2, 1, NotifyIOEventFD},
		{NotifyAuto, 2, 2, NotifyExit},
		{NotifyAuto, 4, 8, NotifyExit},
		{NotifyAuto, 16, 4, NotifyIOEventFD},
		{NotifyIOEventFD, 1, 1, NotifyIOEventFD},
		{NotifyExit, 16, 1, NotifyExit},
	} {
		if got := c.n.Settle(c.hostCPUs, c.vcpus); got != c.want {
			t.Errorf("%v with %d host CPUs for %d vCPUs: %v, want %v", c.n, c.hostCPUs, c.vcpus, got, c.want)
		}
	}
}
