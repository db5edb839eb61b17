package vmm

import (
	"flag"
	"os"
	"testing"

	"github.com/sfvmm/sfvmm/vmm/snapshot"
	"github.com/sfvmm/sfvmm/vmm/snapshot/snaptest"
)

// The snapshot descriptor's encoding of MachineState is pinned per
// snapshot.Version in testdata/descriptor-v<N>.{golden,schema} (see package
// snaptest): a change to MachineState needs a new version. Older versions'
// files stay, and TestDescriptorOlderVersions checks that each is refused
// as another version.
var update = flag.Bool("update", false, "write testdata/descriptor-v<snapshot.Version>.{golden,schema} if this version has none")

func TestDescriptorGolden(t *testing.T) {
	snaptest.Golden(t, snaptest.Pin{Name: "descriptor", Package: "./vmm", State: &MachineState{}, Update: *update})
}

// Every older version's golden descriptor, all of which stay in testdata,
// is refused as another version, naming both, and not as corrupt.
func TestDescriptorOlderVersions(t *testing.T) {
	for v := uint32(1); v < snapshot.Version; v++ {
		path := snaptest.Path("descriptor", v, "golden")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("older versions' golden descriptors stay in testdata: %v", err)
		}
		_, decodeErr := snapshot.Decode(b, &MachineState{})
		_, headerErr := snapshot.DecodeHeader(b)
		snaptest.RefusedAsVersion(t, path+": Decode", decodeErr, v)
		snaptest.RefusedAsVersion(t, path+": DecodeHeader", headerErr, v)
		t.Logf("%s: %v", path, decodeErr)
	}
}
