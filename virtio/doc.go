// Package virtio is the virtio-mmio transport (version 2) and split
// virtqueues; each device is a package below it (blk, rng, balloon,
// vsock). A guest's queues
// are untrusted input: anything malformed fails the device
// (DEVICE_NEEDS_RESET) with one log line, and the VMM goes on.
package virtio
