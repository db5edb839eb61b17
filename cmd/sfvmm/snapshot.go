package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/sfvmm/sfvmm/vmm"
	"github.com/sfvmm/sfvmm/vmm/api"
	"github.com/sfvmm/sfvmm/vmm/kvm"
)

// snapshotCmd implements `sfvmm snapshot --api-sock PATH --out DIR`.
func snapshotCmd(args []string) int {
	fs := flag.NewFlagSet("sfvmm snapshot", flag.ContinueOnError)
	sock := fs.String("api-sock", "", "control socket of the running sfvmm (required)")
	out := fs.String("out", "", "snapshot directory to create (required)")
	paused := fs.Bool("paused", false, "leave the guest paused afterwards")
	overwrite := fs.Bool("overwrite", false, "replace an existing snapshot directory")
	if err := fs.Parse(args); err != nil {
		return usageStatus(err)
	}
	log := newLogger("sfvmm snapshot: ")
	if *sock == "" || *out == "" {
		log.Errorf("--api-sock and --out are required")
		return 2
	}
	c := api.Dial(*sock)
	defer c.Close()
	info, err := c.Snapshot(context.Background(), api.SnapshotRequest{Dir: *out, StayPaused: *paused, Overwrite: *overwrite})
	if err != nil {
		log.Errorf("%v", err)
		return vmm.StatusError
	}
	fmt.Printf("snapshot %s: descriptor %d bytes, memory %d bytes in %d pages, guest paused %v (writing %v)\n",
		info.Dir, info.DescriptorBytes, info.MemoryBytes, info.Pages,
		time.Duration(info.PausedNanos).Round(time.Microsecond), time.Duration(info.WriteNanos).Round(time.Microsecond))
	return 0
}

// restoreCmd implements `sfvmm restore [--api-sock PATH] [--paused] DIR`.
func restoreCmd(args []string) int {
	fs := flag.NewFlagSet("sfvmm restore", flag.ContinueOnError)
	apiSock := fs.String("api-sock", "", "serve the control API on this Unix socket")
	vsockPath := fs.String("vsock", "", "the Unix socket through which host programs reach the restored guest's vsock ports, if it has vsock (default: a new one in the temporary directory, logged)")
	keepDisks := fs.String("keep-disks", "", "when the VM ends, write each of its disks as it saw it to DIR/diskN.img (by default a restored VM's disk writes are dropped, so that the snapshot can be restored again)")
	paused := fs.Bool("paused", false, "restore paused; resume through the control API")
	quiet := fs.Bool("quiet", false, "do not print how the guest ended")
	notify := addNotifyFlag(fs)
	ff := addForkFlags(fs)
	lf := addLogFlags(fs)
	if err := fs.Parse(args); err != nil {
		return usageStatus(err)
	}
	log, err := lf.logger("sfvmm: ")
	if err != nil {
		fmt.Fprintf(os.Stderr, "sfvmm restore: %v\n", err)
		return 2
	}
	if fs.NArg() != 1 {
		log.Errorf("usage: sfvmm restore [--api-sock PATH] [--paused] DIR")
		return 2
	}
	if *paused && *apiSock == "" {
		log.Errorf("--paused needs --api-sock to resume the guest")
		return 2
	}
	console := newConsole(os.Stdout)
	// The launcher asks the machine for its vsock socket when it starts
	// a clone: a restored machine makes one of its own.
	var vm *vmm.VM
	fk, leave, err := ff.forker(*apiSock, func() string { return vm.VsockPath() }, console, log, append(lf.args(), notify.args()...))
	if err != nil {
		log.Errorf("%v", err)
		return vmm.StatusError
	}
	defer leave()
	start := time.Now()
	vm, err = vmm.RestoreDir(fs.Arg(0), vmm.RestoreConfig{Console: console, Log: log.Logger, Fork: forkDevice(fk), VsockPath: *vsockPath, KeepDisks: *keepDisks,
		Notify: notify.n})
	if err != nil {
		log.Errorf("restore %s: %v", fs.Arg(0), err)
		return vmm.StatusError
	}
	defer vm.Close()
	if !*quiet {
		log.Infof("restored %s in %v", fs.Arg(0), time.Since(start).Round(time.Microsecond))
	}
	if fk != nil {
		defer fk.Close()
	}
	return runVM(machine{vm: vm, fork: fk}, runOptions{apiSock: *apiSock, quiet: *quiet, paused: *paused}, log)
}

// describeCmd implements `sfvmm describe [--json] DIR`.
func describeCmd(args []string) int {
	fs := flag.NewFlagSet("sfvmm describe", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the whole descriptor as JSON")
	if err := fs.Parse(args); err != nil {
		return usageStatus(err)
	}
	log := newLogger("sfvmm describe: ")
	if fs.NArg() != 1 {
		log.Errorf("usage: sfvmm describe [--json] DIR")
		return 2
	}
	h, st, err := vmm.ReadSnapshot(fs.Arg(0))
	if err != nil {
		log.Errorf("%v", err)
		return vmm.StatusError
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(struct {
			Header any
			State  *vmm.MachineState
		}{h, st}); err != nil {
			log.Errorf("%v", err)
			return vmm.StatusError
		}
		return 0
	}
	fmt.Printf("snapshot      %s\n", fs.Arg(0))
	fmt.Printf("format        version %d, taken %s\n", h.Version, time.Unix(0, h.CreatedUnixNano).UTC().Format(time.RFC3339))
	fmt.Printf("machine       %d vCPUs, %s RAM, kernel %s\n", h.CPUs, vmm.FormatSize(h.MemBytes), st.Config.Kernel)
	fmt.Printf("cmdline       %q\n", st.Config.Cmdline)
	for _, r := range h.Memory {
		fmt.Printf("memory        [%#x, %#x): %d of %d pages populated\n", r.GPA, r.GPA+r.Size, r.Pages.Count(), r.Pages.Len())
	}
	for _, v := range st.VCPUs {
		fmt.Printf("vcpu %-8d rip %#x rsp %#x cr0 %#x efer %#x %s, %d MSRs, XSAVE %d bytes, TSC %d kHz\n",
			v.ID, v.Regs.RIP, v.Regs.RSP, v.Sregs.CR0, v.Sregs.EFER, mpState(v.MPState), len(v.MSRs), len(v.XSave), v.TSCKHz)
	}
	for i, d := range st.Disks {
		mode := "writable"
		if d.ReadOnly {
			mode = "read-only"
		}
		fmt.Printf("disk %-8d %s, %s", i, vmm.FormatSize(d.Size), mode)
		for _, l := range d.Layers {
			fmt.Printf(", %s", l.Path)
		}
		fmt.Println()
	}
	fmt.Printf("kvmclock      %d ns\n", st.VM.Clock.Clock)
	fmt.Printf("serial        %d bytes waiting for the guest, IER %#x LCR %#x\n", len(st.Devices.Serial.RX)+len(st.Devices.Serial.Pending), st.Devices.Serial.IER, st.Devices.Serial.LCR)
	return 0
}

func mpState(s uint32) string {
	switch s {
	case kvm.MPStateRunnable:
		return "runnable"
	case kvm.MPStateUninitialized:
		return "waiting for SIPI"
	}
	return fmt.Sprintf("mp state %d", s)
}

func usageStatus(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}
