package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/sfvmm/sfvmm/vmm"
	"github.com/sfvmm/sfvmm/vmm/api"
	"github.com/sfvmm/sfvmm/vmm/boot"
	"github.com/sfvmm/sfvmm/vmm/devices"
)

// runCmd implements `sfvmm run` and returns the process exit code: the
// guest's debug-exit code, 0 for a power-off or reset, 2 for a triple
// fault, 1 for an error, 128+N when stopped by signal N.
func runCmd(args []string) int {
	fs := flag.NewFlagSet("sfvmm run", flag.ContinueOnError)
	kernel := fs.String("kernel", "", "kernel image: Linux bzImage, multiboot ELF, or ELF64 (required)")
	initrd := fs.String("initrd", "", "initramfs for Linux; for multiboot, modules as QEMU takes them: 'file args,file2'")
	cmdline := fs.String("cmdline", "", "kernel command line")
	unpack := fs.Bool("unpack-kernel", true, "boot a bzImage's kernel unpacked on the host, once (kept in --kernel-cache): "+
		"the guest skips its own decompression and KASLR; =false boots the bzImage as it is")
	kernelCache := fs.String("kernel-cache", boot.DefaultKernelCache(), "directory keeping unpacked kernels (\"\": none, unpack on every boot)")
	cpus := fs.Int("cpus", 1, "number of vCPUs")
	memory := fs.String("memory", "128M", "guest RAM, e.g. 512M or 2G (a bare number is MiB)")
	quiet := fs.Bool("quiet", false, "do not print how the guest ended")
	stats := fs.Bool("stats", false, "print statistics at exit (peak RSS, guest RAM touched, exits, KVM's counters)")
	apiSock := fs.String("api-sock", "", "serve the control API (HTTP/JSON) on this Unix socket")
	entropy := fs.Bool("rng", false, "a virtio-rng device fed by the host's getrandom (needs the virtio_mmio or, with --virtio pci, virtio_pci driver, and virtio_rng)")
	balloonDev := fs.Bool("balloon", false, "a virtio-balloon device with free page reporting: pages the guest frees are handed back, and a fork never sends them (needs the virtio_mmio or virtio_pci driver, and virtio_balloon)")
	genID := fs.Bool("vmgenid", true, "a VM generation ID that changes in every clone and restored snapshot, so that Linux 5.18+ reseeds its random number generator (=false: none)")
	vsockPath := fs.String("vsock", "", "a virtio-vsock device; host programs reach the guest's ports through this Unix socket "+
		"(\"CONNECT PORT\\n\"), and the guest's connections to port N of the host (CID 2) go to PATH_N; "+
		"a clone's is PATH.TICKET-ID (needs the vsock and vmw_vsock_virtio_transport drivers)")
	cid := fs.Uint64("vsock-cid", 3, "the guest's vsock context ID, with --vsock; clone K of a ticket gets this plus K")
	var disks diskFlags
	fs.Var(&disks, "disk", "a virtio-blk disk on the raw image PATH (PATH[,ro]; repeat for more: /dev/vda, /dev/vdb, ...). "+
		"A fork freezes it for the clones; the parent's writes since go to an overlay that goes back into PATH when sfvmm ends "+
		"(needs the virtio_mmio or virtio_pci driver, and virtio_blk)")
	transport := fs.String("virtio", "mmio", "the virtio devices' transport: mmio (virtio-mmio, announced in ACPI; needs the virtio_mmio driver) "+
		"or pci (virtio-pci with MSI-X on a PCI bus, whose interrupts cost the guest no exit to sfvmm; needs the virtio_pci driver, and no pci=off on --cmdline)")
	notify := addNotifyFlag(fs)
	ff := addForkFlags(fs)
	lf := addLogFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "sfvmm run: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	log, err := lf.logger("sfvmm: ")
	if err != nil {
		fmt.Fprintf(os.Stderr, "sfvmm run: %v\n", err)
		return 2
	}
	if *transport != "mmio" && *transport != "pci" {
		log.Errorf("--virtio %q: want mmio or pci", *transport)
		return 2
	}
	mem, err := parseSize(*memory)
	if err != nil {
		log.Errorf("--memory: %v", err)
		return vmm.StatusError
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
	vm, err = vmm.New(vmm.Config{
		KernelPath:   *kernel,
		UnpackKernel: *unpack,
		KernelCache:  *kernelCache,
		InitrdPath:   *initrd,
		Cmdline:      *cmdline,
		CPUs:         *cpus,
		MemBytes:     mem,
		Console:      console,
		Log:          log.Logger,
		Fork:         forkDevice(fk),
		Devices: devices.Options{Entropy: *entropy, Balloon: *balloonDev, VMGenID: *genID, Disks: disks, VsockCID: vsockCID(*vsockPath, *cid),
			PCI: *transport == "pci"},
		VsockPath: *vsockPath,
		Notify:    notify.n,
	})
	if err != nil {
		log.Errorf("%v", withFlag(err))
		return vmm.StatusError
	}
	defer vm.Close()
	if fk != nil {
		defer fk.Close()
	}
	return runVM(machine{vm: vm, fork: fk}, runOptions{apiSock: *apiSock, quiet: *quiet, stats: *stats}, log)
}

// withFlag puts the flag that set a refused vmm.Config field in front of
// err: vmm names the field, the user knows the flag.
func withFlag(err error) error {
	var ce *vmm.ConfigError
	if !errors.As(err, &ce) {
		return err
	}
	switch ce.Field {
	case "KernelPath":
		return fmt.Errorf("--kernel: %w", err)
	case "InitrdPath":
		return fmt.Errorf("--initrd: %w", err)
	case "CPUs":
		return fmt.Errorf("--cpus: %w", err)
	case "MemBytes":
		return fmt.Errorf("--memory: %w", err)
	case "Disks":
		return fmt.Errorf("--disk: %w", err)
	}
	return err
}

// runOptions are the flags `run` and `restore` share.
type runOptions struct {
	apiSock string
	quiet   bool
	stats   bool
	paused  bool // start paused (restore --paused)
}

// runVM runs a built machine to its end with the console on stdin/stdout,
// the control API on o.apiSock, and SIGINT/SIGTERM stopping it, and returns
// the process exit code.
func runVM(mc machine, o runOptions, log logger) int {
	vm := mc.vm
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	var stoppedBy atomic.Int32
	go func() {
		if s, ok := <-sigs; ok {
			stoppedBy.Store(int32(s.(syscall.Signal)))
			cancel(fmt.Errorf("received %v", s))
		}
	}()
	if o.paused {
		if err := vm.Pause(ctx); err != nil {
			log.Errorf("%v", err)
			return vmm.StatusError
		}
	}
	if o.apiSock != "" {
		mc.apiSock = o.apiSock
		srv, err := api.Serve(ctx, o.apiSock, mc, log.Infof)
		if err != nil {
			log.Errorf("%v", err)
			return vmm.StatusError
		}
		defer srv.Close()
	}

	restore := forwardStdin(vm, log, func() { cancel(errors.New("console escape Ctrl-A x")) })
	exit, err := vm.Run(ctx)
	restore()
	if err != nil {
		log.Errorf("%v", err)
		return vmm.StatusError
	}
	if !o.quiet || exit.Reason == vmm.ExitTripleFault {
		log.Infof("guest ended: %v", exit)
	}
	if o.stats {
		printStats(vm, log)
	}
	if sig := stoppedBy.Load(); exit.Reason == vmm.ExitStopped && sig != 0 {
		return 128 + int(sig)
	}
	return exit.Status()
}

// forwardStdin sends host stdin to the guest's serial port. On a terminal it
// switches to raw mode (so keys such as Ctrl-C reach the guest) and, as
// QEMU does, Ctrl-A x ends the VM. It returns a function that restores the
// terminal.
func forwardStdin(vm *vmm.VM, log logger, quit func()) func() {
	fd := int(os.Stdin.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		// Not a terminal: pass bytes through as they come.
		go func() {
			buf := make([]byte, 4096)
			for {
				n, err := os.Stdin.Read(buf)
				vm.SerialInput(buf[:n])
				if err != nil {
					if err != io.EOF {
						log.Infof("stdin: %v", err)
					}
					return
				}
			}
		}()
		return func() {}
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		log.Infof("stdin: raw mode: %v", err)
	}
	log.Infof("console on stdin; Ctrl-A x quits")
	go func() {
		buf := make([]byte, 256)
		escape := false
		for {
			n, err := os.Stdin.Read(buf)
			if err != nil {
				return
			}
			for _, b := range buf[:n] {
				switch {
				case escape && b == 'x':
					quit()
					return
				case escape && b == 0x01:
					vm.SerialInput([]byte{b}) // Ctrl-A Ctrl-A sends one Ctrl-A
					escape = false
				case b == 0x01:
					escape = true
				default:
					escape = false
					vm.SerialInput([]byte{b})
				}
			}
		}
	}()
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }
}

// printStats reports the VMM's own memory cost: the process's peak RSS less
// the guest RAM the guest touched (which every VMM must hold).
func printStats(vm *vmm.VM, log logger) {
	guest, err := vm.ResidentGuestBytes()
	if err != nil {
		log.Infof("stats: %v", err)
		return
	}
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		log.Infof("stats: getrusage: %v", err)
		return
	}
	peak := uint64(ru.Maxrss) << 10
	log.Infof("stats: peak_rss_kib=%d guest_resident_kib=%d vmm_overhead_kib=%d", peak>>10, guest>>10, (peak-min(peak, guest))>>10)
	log.Infof("stats: %s", vm.ExitStats())
	if ks, err := vm.KVMStats(); err != nil {
		log.Infof("stats: kvm: %v", err)
	} else {
		log.Infof("stats: kvm: %s", vmm.FormatKVMStats(ks))
	}
}

// diskFlags are the --disk flags: PATH or PATH,ro each.
type diskFlags []devices.Disk

func (d *diskFlags) String() string { return fmt.Sprint(*d) }

func (d *diskFlags) Set(v string) error {
	path, opt, _ := strings.Cut(v, ",")
	if path == "" {
		return errors.New("no image path")
	}
	disk := devices.Disk{Path: path}
	switch opt {
	case "":
	case "ro":
		disk.ReadOnly = true
	default:
		return fmt.Errorf("unknown option %q (want PATH or PATH,ro)", opt)
	}
	*d = append(*d, disk)
	return nil
}

// vsockCID is the device option for --vsock and --vsock-cid: no device
// without a path.
func vsockCID(path string, cid uint64) uint64 {
	if path == "" {
		return 0
	}
	return cid
}

// notifyFlag is --notify, which run, restore and clone take.
type notifyFlag struct{ n vmm.Notify }

func addNotifyFlag(fs *flag.FlagSet) *notifyFlag {
	f := &notifyFlag{}
	fs.Var(f, "notify", "how the guest's virtio queue notifications reach sfvmm: "+
		"ioeventfd (KVM wakes a device thread, and the vCPU goes straight back to the guest, whose other work goes on while requests are copied), "+
		"exit (the vCPU's own thread serves each request before it goes back: no thread switches, the fastest where the device thread would have no CPU of its own), "+
		"or auto, the default (ioeventfd where sfvmm may run more threads at once than the VM has vCPUs, exit where it may not)")
	return f
}

func (f *notifyFlag) String() string { return f.n.String() }

func (f *notifyFlag) Set(s string) error {
	n, err := vmm.ParseNotify(s)
	if err != nil {
		// The flag package names the value already.
		return errors.New("want auto, ioeventfd or exit")
	}
	f.n = n
	return nil
}

// args is the flag as a clone of this machine takes it: a clone on the
// same host follows its parent's choice.
func (f *notifyFlag) args() []string { return []string{"--notify", f.n.String()} }
