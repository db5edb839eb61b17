// Command sfvmm is the one sfvmm binary: `sfvmm run` boots a guest; other
// subcommands snapshot, restore and fork it. The binary is also memtap's
// helper processes (the clones' fault handlers, the parent's memory server).
package main

import (
	"fmt"
	"os"

	"github.com/sfvmm/sfvmm/memtap"
)

const usage = `usage: sfvmm COMMAND [FLAGS]

commands:
  run       boot a kernel (bzImage, multiboot or ELF64) with a serial console
  snapshot  snapshot a running sfvmm through its control socket
  restore   continue a guest from a snapshot directory
  describe  print a snapshot's descriptor (--json for all of it)
  fork      fork a running sfvmm into clones through its control socket
  clone     run one clone of a fork (started by the forking sfvmm or an agent)
  agent     run clones on this host for a cluster's forks (and its etcd)
  ca        make a cluster's certificates

Run 'sfvmm COMMAND --help' for a command's flags.
`

func main() {
	memtap.Main() // runs memtap's helper processes, which are this binary
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "run":
		os.Exit(runCmd(os.Args[2:]))
	case "snapshot":
		os.Exit(snapshotCmd(os.Args[2:]))
	case "restore":
		os.Exit(restoreCmd(os.Args[2:]))
	case "fork":
		os.Exit(forkCmd(os.Args[2:]))
	case "clone":
		os.Exit(cloneCmd(os.Args[2:]))
	case "agent":
		os.Exit(agentCmd(os.Args[2:]))
	case "ca":
		os.Exit(caCmd(os.Args[2:]))
	case "describe":
		os.Exit(describeCmd(os.Args[2:]))
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "sfvmm: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
}
