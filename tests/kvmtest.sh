#!/bin/bash
# Runs the KVM test binary once per test, in one-vCPU nested sandboxes side
# by side (one per host core), the test list dealt out round-robin; make
# kvmtest calls it.
#
#   tests/kvmtest.sh KVMBOX TEST-BINARY OUT-DIR SANDBOXES
#
# Each sandbox's go test -v output goes to OUT-DIR/kvmI-TRY.log and
# .json, its kvmbox status to OUT-DIR/kvmI.status. A sandbox whose
# heartbeat stopped (a stall: its emulated CPU stopped taking interrupts,
# kvmbox status 123 and a message saying so) is replaced by a new one for
# the tests it had not finished, at most seven times (TestBoot16Linux,
# sixteen Linux guests on one emulated CPU, has stalled three sandboxes in
# a row and more); each stall is listed
# in OUT-DIR/stalls, which testsummary counts. A test that failed is never
# run again, and a sandbox that died any other way is not replaced. Each
# sandbox's tests get 22 minutes, so that make test stays under CI's 30
# (a sandbox that stalls starts its retry with 22 more); a test still
# running then counts as failed (testsummary).
set -u
kvmbox=$1 bin=$2 out=$3 n=$4
cd "$(dirname "$0")"
all=$("$bin" -test.list '.*' | grep '^Test')

sandbox() {
	local i=$1 todo=$2 try=1 status log finished
	while :; do
		log=$out/kvm$i-$try.log
		"$kvmbox" --hosts 4 --timeout 23m -- "$bin" -test.run "^($todo)\$" -test.v=test2json -test.timeout 22m >"$log" 2>&1
		status=$?
		go tool test2json -p github.com/sfvmm/sfvmm/tests <"$log" >"${log%.log}.json"
		if [ $status != 123 ] || ! grep -q "heartbeat stopped" "$log" || [ $try -ge 8 ]; then
			break
		fi
		finished=$(grep -a -o -E -- '--- (PASS|FAIL|SKIP): Test[A-Za-z0-9_]* \(' "$log" | sed -E 's/.*: (Test[A-Za-z0-9_]*) \(/\1/')
		todo=$(tr '|' '\n' <<<"$todo" | grep -v -x -F "${finished:-^}" | paste -sd'|')
		echo "sandbox $i stalled (try $try); its unfinished tests ran in a new sandbox: ${todo//|/ }" >>"$out/stalls"
		[ -n "$todo" ] || break
		try=$((try + 1))
	done
	echo $status >"$out/kvm$i.status"
}

for i in $(seq 0 $((n - 1))); do
	todo=$(awk -v n="$n" -v i="$i" '(NR - 1) % n == i' <<<"$all" | paste -sd'|')
	echo "kvmtest: sandbox $i runs ${todo//|/ }"
	sandbox "$i" "$todo" &
done
wait
status=0
for i in $(seq 0 $((n - 1))); do
	for log in "$out"/kvm$i-*.log; do
		echo "=== kvmtest: $log"
		cat "$log"
	done
	s=$(cat "$out/kvm$i.status")
	echo "=== kvmtest: sandbox $i: kvmbox exited $s"
	[ "$s" = 0 ] || status=$s
done
exit $status
