// Package virtio will hold the virtio-mmio transport, virtqueues and
// devices (net, blk, rng, balloon). It holds no code yet.
package virtio
