package localfs

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLocalDevice(t *testing.T) {
	for _, c := range []struct {
		dev   string
		under []string
		want  bool
	}{
		{"/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda", nil, true},
		{"/sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda/sda1", nil, true},
		{"/sys/devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1/nvme0n1p2", nil, true},
		{"/sys/devices/virtual/block/nbd0", nil, false},
		{"/sys/devices/virtual/block/nbd3/nbd3p1", nil, false},
		{"/sys/devices/virtual/block/loop7", nil, false},
		{"/sys/devices/rbd/0/block/rbd0", nil, false},
		{"/sys/devices/platform/host3/session1/target3:0:0/3:0:0:0/block/sdb", nil, false},
		{"/sys/devices/pci0000:00/0000:00:03.0/host5/rport-5:0-0/target5:0:0/5:0:0:1/block/sdc", nil, false},
		// LVM on a local disk, and on an iSCSI one.
		{"/sys/devices/virtual/block/dm-0", []string{"/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda/vda2"}, true},
		{"/sys/devices/virtual/block/dm-1", []string{"/sys/devices/platform/host3/session1/target3:0:0/3:0:0:0/block/sdb"}, false},
		// A name that only starts like one.
		{"/sys/devices/pci0000:00/0000:00:04.0/loopback/block/vdb", nil, true},
	} {
		if got := localDevice(c.dev, c.under); got != c.want {
			t.Errorf("localDevice(%s, %v) = %v, want %v", c.dev, c.under, got, c.want)
		}
	}
}

func TestIs(t *testing.T) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if Is(f) {
		t.Error("procfs counts as local storage")
	}
	// /dev/shm is tmpfs wherever it exists.
	g, err := os.CreateTemp("/dev/shm", "localfs-*")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(g.Name())
	defer g.Close()
	if !Is(g) {
		t.Errorf("%s (tmpfs) does not count as local storage", filepath.Base(g.Name()))
	}
}
