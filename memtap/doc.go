// Package memtap will fill a forked child's guest memory on demand: the
// child's RAM is registered with userfaultfd and its faults are served by
// the parent's memory server (see DESIGN.md, "Data flow of a fork"). It
// holds no code yet; the fork issue builds it.
package memtap
