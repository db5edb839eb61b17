# sfvmm: `make demo` boots Linux in sfvmm; `make test` runs every test.
# Both install what they need (Debian packages with apt-get, Go modules
# through the Go proxy). Where /dev/kvm is missing, KVM work runs in the
# nested sandbox (go run ./tests/kvmbox).

SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
BUILD := build
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
KVMBOX := $(CURDIR)/tests/kvmbox/kvmbox.sh
LINUX_CMDLINE := console=ttyS0 reboot=k panic=-1 pci=off quiet

.PHONY: all sfvmm kernels deps test unit fuzz kvmtest demo bench bench-boot bench-snapshot bench-memtap bench-fork bench-blk bench-balloon bench-cluster clean

all: sfvmm kernels

# Debian packages the build, the tests and the sandbox need.
deps:
	@missing=""; \
	command -v qemu-system-x86_64 >/dev/null || missing="$$missing qemu-system-x86"; \
	[ -x /bin/busybox ] || missing="$$missing busybox-static"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v cpio >/dev/null || missing="$$missing cpio"; \
	[ -x /usr/sbin/mkfs.ext4 ] && [ -x /usr/sbin/debugfs ] || missing="$$missing e2fsprogs"; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing="$$missing libc6-dev"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

sfvmm:
	CGO_ENABLED=0 $(GO) build -o $(BUILD)/sfvmm ./cmd/sfvmm
	CGO_ENABLED=0 $(GO) build -o $(BUILD)/sfvmm-agent ./cmd/sfvmm-agent

kernels: deps
	$(MAKE) -C kernels all initramfs

demo: deps kernels
	$(KVMBOX) -- sh -c 'set -x; sfvmm run --cpus 2 --memory 256M --kernel "$$SFVMM_LINUX_KERNEL" \
		--initrd $(CURDIR)/$(BUILD)/kernels/initramfs.cpio \
		--cmdline '\''$(LINUX_CMDLINE) sfvmm.run="uname -sr; echo I see $$(nproc) CPUs; cat /proc/meminfo | head -1; \
			t=$$(sfctl ticket 2); id=$$(sfctl clone $$t); \
			if [ $$id != 0 ]; then echo clone $$id: forked from the running guest, sees $$(nproc) CPUs; sfctl exit; fi; \
			sfctl join $$t && echo parent: both clones exited"'\'''

# Every test: vet and format checks, host unit tests, brief fuzzing, then
# the KVM tests in the sandbox; it ends with the count of tests run.
test: deps kernels
	@mkdir -p $(BUILD)/test && rm -f $(BUILD)/test/*.json $(BUILD)/test/stalls
	$(GO) vet ./... && $(GO) vet -tags kvm ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(KVMBOX) --print-kernel >/dev/null
	$(MAKE) -k unit fuzz kvmtest; status=$$?; \
	$(GO) run ./tests/testsummary -stalls $(BUILD)/test/stalls $$(ls $(BUILD)/test/*.json | sort) && exit $$status

# Host unit tests; they need no network. Where the sandbox's Debian kernel
# is cached (make test fetches it first), tests of real-kernel input use it.
unit:
	export SFVMM_LINUX_KERNEL=$$(ls $(CURDIR)/$(BUILD)/kvmbox/kernel/$$(cat $(BUILD)/kvmbox/kernel/current 2>/dev/null)/boot/vmlinuz-* 2>/dev/null); \
	$(GO) test -count=1 -json ./... > $(BUILD)/test/unit.json; status=$$?; \
	$(GO) run ./tests/testsummary -brief $(BUILD)/test/unit.json; exit $$status

# Each fuzz target for 20000 inputs on top of its seed corpus (which the
# unit tests already run). A count rather than a time: with -fuzztime 5s a
# loaded machine made Go's fuzzer fail with "context deadline exceeded".
fuzz:
	@for f in $$(grep -rl --include='*_test.go' '^func Fuzz' .); do \
		for t in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$f | sed 's/^func //'); do \
			echo "fuzz $$t in $$(dirname $$f)"; \
			$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime 20000x ./$$(dirname $$f) || exit 1; \
		done; \
	done

# The KVM tests, once each, in one-vCPU sandboxes side by side (one per
# host core; a sandbox with two vCPUs corrupts nested guests, see
# tests/kvmbox/guest.go), the test list dealt out between them. A test that
# fails fails the build, and so does a sandbox that dies or runs past its
# timeout. A sandbox that stalls is replaced for the tests it had not
# finished; the summary counts the stalls (tests/kvmtest.sh).
KVMTEST_SANDBOXES ?= 2
kvmtest:
	@rm -f $(BUILD)/test/kvm* $(BUILD)/test/stalls
	CGO_ENABLED=0 $(GO) test -c -tags kvm -o $(BUILD)/test/kvm.test ./tests
	tests/kvmtest.sh $(KVMBOX) $(CURDIR)/$(BUILD)/test/kvm.test $(CURDIR)/$(BUILD)/test $(KVMTEST_SANDBOXES)

bench: bench-boot bench-snapshot bench-memtap bench-fork bench-blk bench-balloon bench-cluster

bench-boot: deps kernels sfvmm
	CGO_ENABLED=0 $(GO) build -o $(BUILD)/bench/boot ./tests/bench/boot
	$(KVMBOX) -- $(BUILD)/bench/boot -root $(CURDIR)

# Snapshot size, pause and restore against QEMU's migrate to a file and
# -incoming, for Linux guests of several sizes (takes several minutes).
bench-snapshot: deps kernels sfvmm
	CGO_ENABLED=0 $(GO) build -o $(BUILD)/bench/snapshot ./tests/bench/snapshot
	$(KVMBOX) --mem 6G --timeout 60m -- $(BUILD)/bench/snapshot -root $(CURDIR) $(BENCH_SNAPSHOT_FLAGS)

# Fork latency against cold boots, the parent's pause against populated
# memory, pages fetched per clone (in the sandbox; several minutes).
bench-fork: deps kernels sfvmm
	CGO_ENABLED=0 $(GO) build -o $(BUILD)/bench/fork ./tests/bench/fork
	$(KVMBOX) --mem 4G --timeout 60m -- $(BUILD)/bench/fork -root $(CURDIR) $(BENCH_FORK_FLAGS)

# A Linux guest's sequential and random disk reads and writes against
# QEMU's virtio-blk-pci and QEMU microvm's virtio-blk on virtio-mmio, on
# the same image (in the sandbox; several minutes). BENCH_BLK_CPUS=2 runs
# it in a two-CPU sandbox, where a VMM's I/O threads and the guest's vCPU
# need not take turns on one CPU; on a two-core machine its figures
# spread more, and one of its QEMU boots in twenty hung there.
BENCH_BLK_CPUS ?= 1
bench-blk: deps kernels sfvmm
	CGO_ENABLED=0 $(GO) build -o $(BUILD)/bench/blk ./tests/bench/blk
	$(KVMBOX) --cpus $(BENCH_BLK_CPUS) --mem 4G --timeout 30m -- $(BUILD)/bench/blk -root $(CURDIR) $(BENCH_BLK_FLAGS)

# Pages a fork sends to a clone of a Linux guest that freed most of its
# memory, with free page reporting (--balloon) and without (in the sandbox;
# several minutes).
bench-balloon: deps kernels sfvmm
	CGO_ENABLED=0 $(GO) build -o $(BUILD)/bench/balloon ./tests/bench/balloon
	$(KVMBOX) --mem 4G --timeout 30m -- $(BUILD)/bench/balloon -root $(CURDIR) $(BENCH_BALLOON_FLAGS)

# Fork across 4 sandbox hosts: one page fault's service from host1 to
# host0's memory server against its floor on the same path, then bytes the
# parent's host sent, unicast and multicast, fork time against one host and
# cold boots, pages per clone (in the sandbox; an hour or more at the
# default 64 MiB).
BENCH_MEMTAP_HOSTS_FLAGS ?= -faults 500 -rounds 4 -scan 32 -scan-rounds 1 -small 16 -large 128 -reps 3
bench-cluster: deps kernels sfvmm
	CGO_ENABLED=0 $(GO) build -o $(BUILD)/bench/cluster ./tests/bench/cluster
	CGO_ENABLED=0 $(GO) build -o $(BUILD)/bench/memtap ./tests/bench/memtap
	$(KVMBOX) --hosts 4 --mem 6G --timeout 180m -- sh -c 'set -e; set -- $$SFVMM_HOST_ADDRS; \
		ip netns exec host1 $(BUILD)/bench/memtap -listen-netns host0 -listen-ip $$1 $(BENCH_MEMTAP_HOSTS_FLAGS); \
		$(BUILD)/bench/cluster -root $(CURDIR) $(BENCH_CLUSTER_FLAGS)'

# memtap's page-fault service against a plain userfaultfd handler, on the
# host (root, userfaultfd; no KVM).
bench-memtap:
	CGO_ENABLED=0 $(GO) build -o $(BUILD)/bench/memtap ./tests/bench/memtap
	$(BUILD)/bench/memtap

clean:
	rm -rf $(BUILD)
	$(MAKE) -C kernels clean
