//go:build kvm

package tests

import (
	"bufio"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// vsockModules are the guest's vsock modules, after virtioModules.
var vsockModules = []string{"net/vmw_vsock/vsock", "net/vmw_vsock/vmw_vsock_virtio_transport_common", "net/vmw_vsock/vmw_vsock_virtio_transport"}

// vsockHostService serves connections the guest makes to port 5000 of the
// host (the Unix socket sock_5000): it reads to the end, answers "pong:"
// and what it read, and closes.
func vsockHostService(t *testing.T, sock string) {
	t.Helper()
	ln, err := net.Listen("unix", sock+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(time.Minute))
			b, _ := io.ReadAll(c)
			c.Write(append([]byte("pong:"), b...))
			c.Close()
		}
	}()
}

// vsockExchange connects to guest port port through the device's socket,
// sends msg and returns what the guest answered before it closed.
func vsockExchange(t *testing.T, sock string, port, msg string) string {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := io.WriteString(c, "CONNECT "+port+"\n"); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	ok, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(ok, "OK ") {
		t.Fatalf("CONNECT %s through %s: %q, %v", port, sock, ok, err)
	}
	io.WriteString(c, msg)
	c.(*net.UnixConn).CloseWrite()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read the guest's answer: %v", err)
	}
	return string(b)
}

// A host program and a guest program exchange data over vsock both ways,
// in the parent and then in a clone, which has its own CID and its own
// socket. With each --notify: vsock's own kicks of its queues meet the
// guest's notifications on a vCPU's thread or on the queues' threads.
func TestVsock(t *testing.T) {
	for _, notify := range []string{"exit", "ioeventfd"} {
		t.Run(notify, func(t *testing.T) { testVsock(t, notify) })
	}
}

func testVsock(t *testing.T, notify string) {
	kernel, initrd := linuxKernel(t)
	mods := slices.Concat(virtioModules, vsockModules)
	initrd = initrdWithModules(t, initrd, mods...)
	sock := filepath.Join(t.TempDir(), "v.sock")
	vsockHostService(t, sock)
	script := insmods(mods...) + ` && echo cid=$(vsock cid) reply=$(vsock send 2 5000 ping-from-parent) && vsock echo 52 && ` +
		`t=$(sfctl ticket 1) && id=$(sfctl clone $t); ` +
		`if [ $id != 0 ]; then echo clone $id cid=$(vsock cid) reply=$(vsock send 2 5000 ping-from-clone); vsock echo 53; sfctl exit; fi; ` +
		`sfctl join $t && echo joined=$((1+1))`
	p := start(t, sfvmmPath(t), "run", "--notify", notify, "--memory", "256M", "--vsock", sock, "--kernel", kernel, "--initrd", initrd,
		"--cmdline", linuxCmdline+` sfvmm.run="`+script+`"`)
	p.waitFor(t, "listening 52", 3*time.Minute)
	if got := vsockExchange(t, sock, "52", "hello parent"); got != "HELLO PARENT" {
		t.Errorf("the parent's guest answered %q, want HELLO PARENT", got)
	}
	p.waitFor(t, "listening 53", 2*time.Minute)
	clones, _ := filepath.Glob(sock + ".*-1")
	if len(clones) != 1 {
		t.Fatalf("clone sockets %v, want one %s.TICKET-1", clones, sock)
	}
	if got := vsockExchange(t, clones[0], "53", "hello clone"); got != "HELLO CLONE" {
		t.Errorf("the clone's guest answered %q, want HELLO CLONE", got)
	}
	if code := p.wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", code, p.Output())
	}
	out := p.Output()
	for _, want := range []string{"cid=3 reply=pong:ping-from-parent", "clone 1 cid=4 reply=pong:ping-from-clone", "joined=2"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the output:\n%s", want, out)
		}
	}
}
