// Package memtap fills a forked child's guest RAM on demand. The child's
// RAM starts empty (a fresh private anonymous mapping) and is registered
// with userfaultfd for missing pages; each first touch of a page, by a vCPU
// through KVM or by the VMM's own code, faults into memtap, which fills it:
//
//   - pages the parent never populated, locally with UFFDIO_ZEROPAGE and
//     nothing asked of anyone (with the rest of their run, in one call);
//   - other pages from the parent's memory server (package memtap/server)
//     over a stream socket, authenticated with the clone family's key. The
//     server answers pages that were all zero at the fork with a flag
//     instead of data, and they too are zero-filled.
//
// A child on its parent's host may also read the parent's memory directly
// (Config.Parent; sfvmm's clones do when they are the parent's child
// processes, unless `sfvmm clone --direct-reads=false`): a page the parent
// has not written since the fork is read from the parent's /proc/PID/mem
// and installed if the parent's page table still shows the memory server's
// write protection on it after the read, which proves it unchanged. That
// saves the two process wake-ups of a round trip through the server. Pages
// the parent has written come from the server, which saved them; so does
// everything once the server is gone, since the kernel drops its write
// protection with it. A read takes the parent's mm lock, which a parent
// thread blocked on a stopped (not dead) server can hold up for as long as
// the server stays stopped, and it cannot be interrupted; so a read whose
// thread has been blocked (not merely waiting for a CPU) for Config.Timeout
// fails the child as a silent server does (see "When the server dies"),
// and the helper's exit ends it.
//
// A fetch asks for a window of pages from the faulting one on (Config.Window,
// 16 by default), installed with UFFDIO_COPY so that later touches do not
// fault. When faults come in sequence the window doubles up to
// Config.MaxWindow (256) and the next window is read ahead at once, so a
// sequential scan faults once per two windows.
//
// Statistics (Stats) count faults, pages fetched, zero-filled and
// prefetched, requests and bytes received, with a histogram of fault
// service times; the VMM reports them in its API and at exit.
//
// # The Go-runtime pitfall, and why the handler is a process
//
// A thread that touches a missing page blocks in the kernel until the page
// is filled. KVM_RUN is a system call, so a vCPU thread blocked in it has
// given its Go P back to the scheduler (the VMM makes a clone's KVM_RUN
// through the runtime's system-call entry for that reason, although its
// other machines keep their P in the guest). A goroutine that touches guest RAM
// from Go code (device emulation copying a virtio buffer) is not in a
// system call: its thread blocks holding its P. A fault handler that is a
// goroutine of the same process needs a P to run, so GOMAXPROCS such
// faults at once leave it none: the VMM deadlocks. LockOSThread does not
// help (a locked thread needs a P to run Go code too), and neither does
// asynchronous preemption in general: it can interrupt the wait and take
// the P back only at an async-safe point, and the copy() that device code
// uses is assembly (memmove), which never is one. A Go handler that needs
// no P would need a thread outside the Go runtime (cgo), which sfvmm, a
// static CGO_ENABLED=0 binary, does not have.
//
// So memtap runs its fault handler in a helper process, as SnowFlock did
// and Firecracker's page-fault handlers do: Start creates and registers the
// userfaultfd in the VMM (it can only be created by the process whose
// memory it covers), then re-executes the VMM binary in a helper role and
// passes it the descriptor. The helper reads fault messages, talks to the
// memory server and resolves faults with UFFDIO_COPY and UFFDIO_ZEROPAGE,
// which act on the VMM's memory through the descriptor; it never maps guest
// RAM, so nothing in it can fault on it. No number of blocked VMM threads
// can starve it. Counters live in shared memory, and errors come back over
// the control socket. The cost is one process per child VMM and
// a re-exec hook: the VMM's main must call Main before anything else.
// TestGOMAXPROCSFaultStorm is the adversarial case: GOMAXPROCS=2 and 16
// goroutines faulting in copy() at once, in a child on missing pages and in
// a parent on write-protected ones (the memory server's copy-before-write
// handler is a helper process for the same reason); as its control, the
// same storm against a LockOSThread'd in-process handler deadlocks.
//
// # When the server dies
//
// The server sends a keep-alive every second on each connection, with the
// count of requests it has answered, whatever else it is doing. A
// connection that drops, a server from which nothing at all (no reply, no
// keep-alive) has come for Config.Timeout (5 s) while requests wait, and a
// server whose keep-alives say for Config.StuckAfter (60 s) that it has
// answered nothing, are fatal: memtap never installs a guess. So a server
// that is gone, stopped or cut off fails the child within the timeout,
// while one that is merely slow (many clones, a host short of CPU) is
// waited for. A server on this host may be too short of CPU to send its
// keep-alives: it is judged by what the kernel says of its process (its
// socket's peer credentials name it), and is waited for, up to StuckAfter,
// while it uses CPU time or has a thread waiting to run; one that is
// stopped, or asleep without using any, fails the child after Timeout, in
// the handshake too. Time in which the helper itself did not run is not held
// against the server: its keep-alives are read from the socket before the
// helper judges, and a wait that ends far later than asked (the whole
// machine stood still, the server with it) starts the silence over. The
// error reaches the VMM on Done/Err within that bound.
// The threads blocked on missing pages stay blocked (they never see wrong
// data); the VMM must then end the child: either exit, or call Fence, which
// revokes access to guest RAM and wakes them, so that KVM_RUN fails with
// EFAULT and a Go access panics, and tear down. The VMM's own goroutine that
// receives the error needs a P; if every P is held by a thread blocked on
// guest RAM it cannot run. So the helper waits Config.KillAfter (2 s) for
// the VMM to acknowledge the error and otherwise kills it (SIGKILL) after
// printing the error: a child ends, with its reason printed, in bounded time
// in every case. Because the VMM keeps its own reference to the userfaultfd,
// the helper dying does not release the blocked threads onto zero pages
// either.
//
// Child RAM must not be touched before Start (a page made present then
// would never be filled), and Close must come only after the VM has stopped
// (it unregisters the RAM; any page not yet filled would then read zero).
//
// It is not the memory server (memtap/server), the wire format
// (memtap/wire) or multicast distribution.
package memtap
