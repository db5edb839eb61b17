// Package virtio is the virtio transports, virtio-mmio (version 2) and
// virtio-pci (modern, with MSI-X), and split virtqueues; each device is a
// package below it (blk, rng, balloon, vsock). Both transports share one
// core (transport.go): status, feature negotiation, queues. A guest's
// queues and register accesses are untrusted input: anything malformed
// fails the device (DEVICE_NEEDS_RESET) with one log line, or is ignored,
// and the VMM goes on.
package virtio
