package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"ls":             "ls",
		"/a/b-c_d.e=f:g": "/a/b-c_d.e=f:g",
		"":               "''",
		"exit 7":         "'exit 7'",
		"it's":           `'it'\''s'`,
		"$HOME":          "'$HOME'",
		"a\nb":           "'a\nb'",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestHostsEnv(t *testing.T) {
	if got := hostsEnv(0); got != nil {
		t.Errorf("hostsEnv(0) = %v", got)
	}
	want := []string{"SFVMM_HOSTS=host0 host1 host2", "SFVMM_HOST_ADDRS=10.77.0.1 10.77.0.2 10.77.0.3"}
	if got := hostsEnv(3); !reflect.DeepEqual(got, want) {
		t.Errorf("hostsEnv(3) = %v, want %v", got, want)
	}
}

func TestHostsSetup(t *testing.T) {
	if hostsSetup(0) != nil {
		t.Error("hostsSetup(0) is not empty")
	}
	b := hostsSetup(2)
	if len(b) != 3 {
		t.Fatalf("got %d batches, want root + one per host", len(b))
	}
	root := strings.Join(b[0].lines, "\n")
	for _, want := range []string{"link add kvmboxbr0 type bridge", "netns add host1",
		"link add kvmbox1 type veth peer name eth0 netns host1", "link set kvmbox1 master kvmboxbr0"} {
		if !strings.Contains(root, want) {
			t.Errorf("root batch lacks %q:\n%s", want, root)
		}
	}
	if got, want := b[2].args(), []string{"ip", "-n", "host1", "-batch", "-"}; !reflect.DeepEqual(got, want) {
		t.Errorf("host1 batch runs %v, want %v", got, want)
	}
	if got := strings.Join(b[2].lines, "\n"); !strings.Contains(got, "addr add 10.77.0.2/24 dev eth0") || !strings.Contains(got, "link set lo up") {
		t.Errorf("host1 batch:\n%s", got)
	}
	down := hostsTeardown(2)
	if want := []string{"netns delete host0", "netns delete host1", "link delete kvmboxbr0"}; !reflect.DeepEqual(down.lines, want) {
		t.Errorf("teardown %v, want %v", down.lines, want)
	}
}

func TestRunScript(t *testing.T) {
	b := &box{opts: &options{hosts: 1, cmd: []string{"sh", "-c", "echo 'hi'; exit 7"}}, cwd: "/work/main/vmm"}
	s := b.runScript("/w/build/kvmbox/run-1", []string{"KVMBOX=1", "A=b c"})
	for _, want := range []string{
		"exec </dev/null >>/w/build/kvmbox/run-1/stdout 2>>/w/build/kvmbox/run-1/stderr\n",
		": >/w/build/kvmbox/run-1/started\n",
		"ip -n host0 -batch - <<'EOF' || ",
		"cd /work/main/vmm || exit 125\n",
		`exec env -i KVMBOX=1 'A=b c' sh -c 'echo '\''hi'\''; exit 7'` + "\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("run script lacks %q:\n%s", want, s)
		}
	}
	// Output must be redirected before anything can print.
	if strings.Index(s, "exec </dev/null") > strings.Index(s, "ip -batch") {
		t.Errorf("network setup runs before output is redirected:\n%s", s)
	}
}
