package main

import (
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseArgs(t *testing.T) {
	tests := []struct {
		args    []string
		want    options // only the compared fields
		wantErr string
	}{
		{args: []string{"--", "sh", "-c", "exit 7"},
			want: options{mem: "3G", hosts: 1, timeout: 20 * time.Minute, stallTimeout: 30 * time.Second, modules: []string{"tun"}, cmd: []string{"sh", "-c", "exit 7"}}},
		{args: []string{"--hosts", "2", "--cpus=1", "--mem", "4096M", "--timeout", "90s", "--modules", "tun, vhost_net", "--", "go", "version"},
			want: options{cpus: 1, mem: "4096M", hosts: 2, hostsSet: true, timeout: 90 * time.Second, stallTimeout: 30 * time.Second, modules: []string{"tun", "vhost_net"}, cmd: []string{"go", "version"}}},
		// Without "--" the command starts at the first non-flag argument,
		// and its own flags stay its own.
		{args: []string{"-q", "ls", "-l"},
			want: options{mem: "3G", hosts: 1, timeout: 20 * time.Minute, stallTimeout: 30 * time.Second, modules: []string{"tun"}, quiet: true, cmd: []string{"ls", "-l"}}},
		{args: []string{"--modules=", "--hosts=0", "--", "true"},
			want: options{mem: "3G", hostsSet: true, timeout: 20 * time.Minute, stallTimeout: 30 * time.Second, cmd: []string{"true"}}},
		{args: []string{"--print-kernel"},
			want: options{mem: "3G", hosts: 1, timeout: 20 * time.Minute, stallTimeout: 30 * time.Second, modules: []string{"tun"}, printKernel: true}},
		{args: []string{"--print-kernel", "--", "ls"}, wantErr: "takes no command"},
		{args: []string{}, wantErr: "no command"},
		{args: []string{"--"}, wantErr: "no command"},
		{args: []string{"--hosts", "-1", "--", "true"}, wantErr: "--hosts -1"},
		{args: []string{"--hosts", "201", "--", "true"}, wantErr: "--hosts 201"},
		{args: []string{"--cpus", "0", "--", "true"}, wantErr: "--cpus 0"},
		{args: []string{"--mem", "lots", "--", "true"}, wantErr: "--mem"},
		{args: []string{"--timeout", "0s", "--", "true"}, wantErr: "--timeout"},
		{args: []string{"--stall-timeout", "-1s", "--", "true"}, wantErr: "--stall-timeout"},
		{args: []string{"--module-param", "kvm:tdp_mmu=0", "--module-param=kvm-amd:npt=1", "--module-param", "kvm:x=1", "--", "true"},
			want: options{mem: "3G", hosts: 1, timeout: 20 * time.Minute, stallTimeout: 30 * time.Second, modules: []string{"tun"},
				moduleParams: map[string]string{"kvm": "tdp_mmu=0 x=1", "kvm_amd": "npt=1"}, cmd: []string{"true"}}},
		{args: []string{"--module-param", "tdp_mmu=0", "--", "true"}, wantErr: "NAME:ARGS"},
		{args: []string{"--qemu", "9.0", "--", "true"}, wantErr: "--qemu"},
		{args: []string{"--sandbox-kernel", "6.12", "--", "true"}, wantErr: "--sandbox-kernel"},
		{args: []string{"--tcg-thread", "many", "--", "true"}, wantErr: "--tcg-thread"},
		{args: []string{"--bogus", "--", "true"}, wantErr: "not defined"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			got, err := parseArgs(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// Fields no case sets have their defaults.
			want := tt.want
			if want.cpus == 0 {
				want.cpus = 1
			}
			want.qemu, want.sandboxKernel, want.tcgThread = qemuDebian13, kernelSystem, "multi"
			if want.moduleParams == nil {
				want.moduleParams = map[string]string{}
			}
			if !reflect.DeepEqual(*got, want) {
				t.Fatalf("got  %+v\nwant %+v", *got, want)
			}
		})
	}
}

// A heartbeat older than the window is a stall; a fresh one, or none yet,
// is not.
func TestStallWatch(t *testing.T) {
	beat := filepath.Join(t.TempDir(), "heartbeat")
	w := stallWatch{beat: beat, window: 30 * time.Second}
	now := time.Now()
	if w.stalled(now) {
		t.Errorf("stalled before the first beat")
	}
	if err := os.WriteFile(beat, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if w.stalled(now.Add(2 * time.Second)) {
		t.Errorf("stalled with a fresh beat")
	}
	if !w.stalled(now.Add(time.Minute)) {
		t.Errorf("not stalled with a beat a minute old")
	}
	if (&stallWatch{beat: beat}).stalled(now.Add(time.Hour)) {
		t.Errorf("a zero window stalled")
	}
}
