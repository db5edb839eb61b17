// Command sfvmm is the one sfvmm binary: `sfvmm run` boots a guest; later
// subcommands snapshot, restore and fork it.
package main

import (
	"fmt"
	"os"
)

const usage = `usage: sfvmm COMMAND [FLAGS]

commands:
  run       boot a kernel (bzImage, multiboot or ELF64) with a serial console
  snapshot  snapshot a running sfvmm through its control socket
  restore   continue a guest from a snapshot directory
  describe  print a snapshot's descriptor (--json for all of it)

Run 'sfvmm COMMAND --help' for a command's flags.
`

func main() {
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
	case "describe":
		os.Exit(describeCmd(os.Args[2:]))
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "sfvmm: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
}
