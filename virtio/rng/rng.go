// Package rng is virtio-rng (virtio 1.2, 5.4): one queue, whose writable
// buffers the device fills from the host's getrandom.
package rng

import (
	"crypto/rand"

	"github.com/sfvmm/sfvmm/virtio"
)

// Type is virtio's device ID for an entropy source.
const Type = 4

// QueueSize is the largest queue the device takes.
const QueueSize = 64

// Device is a virtio entropy device. It has no state of its own.
type Device struct{}

func (Device) Type() uint32         { return Type }
func (Device) Features() uint64     { return 0 }
func (Device) QueueSizes() []uint16 { return []uint16{QueueSize} }
func (Device) Config() []byte       { return nil }

// maxRequest bounds the bytes one request gets: drivers ask for a few
// dozen, and a chain of huge buffers must not hold the vCPU.
const maxRequest = 1 << 20

// Handle fills the chain's writable buffers with random bytes, up to
// maxRequest. A request carries no readable part (virtio 1.2, 5.4.6.1).
func (Device) Handle(_ int, c virtio.Chain) (uint32, error) {
	if len(c.Readable) != 0 {
		return 0, virtio.Malformed("entropy request with a device-readable buffer")
	}
	n := 0
	for _, b := range c.Writable {
		b = b[:min(len(b), maxRequest-n)]
		rand.Read(b) // getrandom(2); crypto/rand does not fail
		n += len(b)
	}
	return uint32(n), nil
}
