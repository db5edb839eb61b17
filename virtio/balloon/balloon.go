// Package balloon is virtio-balloon (virtio 1.2, 5.5) for what sfvmm needs
// of it: free page reporting, through which the guest hands back pages it
// has freed, and inflation on request. The host never asks the guest to
// inflate (num_pages stays 0); DEFLATE_ON_OOM lets the guest take pages
// back on its own.
//
// A page handed back is discarded: dropped from the VM's RAM, or zeroed
// where RAM may not be dropped (see Discard). Either way a fork never
// sends it to a clone, which fills it locally as zero.
package balloon

import (
	"encoding/binary"

	"github.com/sfvmm/sfvmm/virtio"
)

// Type is virtio's device ID for a memory balloon.
const Type = 5

// Feature bits (virtio 1.2, 5.5.3).
const (
	featureDeflateOnOOM  = 1 << 2
	featureFreePageRepor = 1 << 5
)

// Queues, in the order the driver finds them with the features offered
// (no statistics or free page hinting queue).
const (
	queueInflate = iota
	queueDeflate
	queueReporting
)

// QueueSize is each queue's largest size; a report holds up to 32 ranges.
const QueueSize = 128

// pageSize is the unit of inflate and deflate requests' PFNs.
const pageSize = 4096

// Discard hands back guest RAM b (page-aligned, inside RAM).
type Discard func(b []byte)

// Device is a virtio balloon that discards what the guest hands back.
type Device struct {
	mem     virtio.Memory
	discard Discard
}

// New returns the device; discard drops or zeroes the pages.
func New(mem virtio.Memory, discard Discard) *Device {
	return &Device{mem: mem, discard: discard}
}

func (*Device) Type() uint32 { return Type }
func (*Device) Features() uint64 {
	return featureDeflateOnOOM | featureFreePageRepor
}
func (*Device) QueueSizes() []uint16 { return []uint16{QueueSize, QueueSize, QueueSize} }

// Config is virtio_balloon_config: num_pages 0 (no inflation asked),
// actual, free_page_report_cmd_id, poison_val; all zero.
func (*Device) Config() []byte { return make([]byte, 16) }

// Handle serves inflate requests (readable arrays of 32-bit PFNs, whose
// pages are discarded), deflate requests (the guest takes pages back:
// nothing to do) and free page reports (writable buffers that are the free
// pages themselves, discarded and returned with nothing written).
func (d *Device) Handle(q int, c virtio.Chain) (uint32, error) {
	switch q {
	case queueInflate:
		for _, b := range c.Readable {
			if len(b)%4 != 0 {
				return 0, virtio.Malformed("inflate request of %d bytes, not whole 32-bit page numbers", len(b))
			}
			for i := 0; i < len(b); i += 4 {
				pfn := uint64(binary.LittleEndian.Uint32(b[i:]))
				page, err := d.mem.Slice(pfn*pageSize, pageSize)
				if err != nil {
					return 0, virtio.Malformed("inflate: page %#x outside guest RAM", pfn)
				}
				d.discard(page)
			}
		}
	case queueReporting:
		if len(c.Readable) != 0 {
			return 0, virtio.Malformed("free page report with a device-readable buffer")
		}
		for _, b := range c.Writable {
			if len(b) > 0 {
				d.discard(b)
			}
		}
	}
	return 0, nil
}
