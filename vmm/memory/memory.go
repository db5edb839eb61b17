// Package memory owns guest RAM: one private anonymous mapping per RAM
// region, laid out around the 32-bit PCI hole. sfvmm owns the mapping (rather
// than letting a library allocate it) so that later layers can register it
// with userfaultfd and serve it to clones.
//
// It is not an allocator for the VMM's own data and knows nothing of KVM.
package memory

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sfvmm/sfvmm/vmm/localfs"
)

// Layout of guest physical memory.
const (
	PageSize = 4096
	// HoleStart is where RAM below 4 GiB ends; [HoleStart, 4 GiB) holds
	// MMIO (PCI hole, IOAPIC, LAPIC, ...). A guest larger than HoleStart
	// gets the rest of its RAM from HighStart.
	HoleStart = 0xC000_0000
	HighStart = 1 << 32
	// MaxSize bounds --memory: 1 TiB is far beyond any host this runs on,
	// and keeps every GPA below the 40-bit physical address width.
	MaxSize = 1 << 40
)

// Region is one contiguous range of guest RAM.
type Region struct {
	GPA  uint64
	Size uint64
	Host []byte // the host mapping; len(Host) == Size
}

// Residency returns the region's mincore(2) vector: a byte per page, bit 0
// set where the page is present in host memory.
func (r Region) Residency() ([]byte, error) {
	vec := make([]byte, r.Size/PageSize)
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&r.Host[0])), uintptr(len(r.Host)), uintptr(unsafe.Pointer(&vec[0])))
	if e != 0 {
		return nil, fmt.Errorf("mincore guest RAM at %#x: %w", r.GPA, e)
	}
	return vec, nil
}

// Memory is a VM's guest RAM.
type Memory struct {
	size    uint64
	regions []Region
	// mu guards keep, and so orders KeepPages after every Discard that
	// drops pages.
	mu   sync.RWMutex
	keep bool // Discard zeroes pages rather than dropping them (KeepPages)
	// remote: MapFile mapped a file off local storage (RemoteFile).
	remote bool
}

// ErrRange reports a guest-physical access outside RAM.
var ErrRange = errors.New("guest address outside RAM")

// New maps size bytes of guest RAM. size must be a positive multiple of the
// page size. The mapping is MAP_NORESERVE: pages cost nothing until touched.
func New(size uint64) (*Memory, error) {
	switch {
	case size == 0:
		return nil, errors.New("guest memory size is 0")
	case size%PageSize != 0:
		return nil, fmt.Errorf("guest memory size %d is not a multiple of %d", size, PageSize)
	case size > MaxSize:
		return nil, fmt.Errorf("guest memory size %d exceeds the maximum of %d", size, uint64(MaxSize))
	}
	m := &Memory{size: size}
	low := min(size, HoleStart)
	if err := m.add(0, low); err != nil {
		return nil, err
	}
	if size > low {
		if err := m.add(HighStart, size-low); err != nil {
			m.Close()
			return nil, err
		}
	}
	return m, nil
}

// HugePageSize is the size of a transparent huge page and of KVM's large
// stage-2 (EPT/NPT) mappings on x86.
const HugePageSize = 2 << 20

func (m *Memory) add(gpa, size uint64) error {
	b, err := mapAligned(size)
	if err != nil {
		return fmt.Errorf("map %d bytes of guest memory: %w", size, err)
	}
	// Transparent huge pages let KVM map guest RAM with 2 MiB stage-2
	// entries: far fewer EPT/NPT faults, which matters most under nested
	// virtualisation where each one is an exit to the outer hypervisor.
	// Without THP support the advice fails and 4 KiB pages are used.
	_ = unix.Madvise(b, unix.MADV_HUGEPAGE)
	m.regions = append(m.regions, Region{GPA: gpa, Size: size, Host: b})
	return nil
}

// mapAligned maps size bytes of private anonymous memory starting on a
// 2 MiB boundary. KVM maps a huge page into the guest only where the host
// address and the guest-physical one agree modulo 2 MiB (every region's GPA
// is 2 MiB aligned); kernels before 6.7 place a large anonymous mapping
// wherever it fits, and then each 4 KiB guest page cost its own stage-2
// fault (20,000 of them in a Linux boot). It maps 2 MiB more than asked
// and unmaps the slack on both sides.
func mapAligned(size uint64) ([]byte, error) {
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(size+HugePageSize), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, err
	}
	head := (HugePageSize - uintptr(p)%HugePageSize) % HugePageSize
	if head > 0 {
		if err := unix.MunmapPtr(p, head); err != nil {
			unix.MunmapPtr(p, uintptr(size+HugePageSize))
			return nil, err
		}
	}
	start := unsafe.Add(p, head)
	tail := HugePageSize - head // never 0: head is less than 2 MiB
	if err := unix.MunmapPtr(unsafe.Add(start, size), tail); err != nil {
		unix.MunmapPtr(start, uintptr(size)+tail)
		return nil, err
	}
	return unsafe.Slice((*byte)(start), size), nil
}

// KeepPages makes Discard zero the pages it is given from now on, rather
// than drop them. A fork's memory server freezes RAM with userfaultfd's
// write protection and copies a page only when the parent writes it: a
// page dropped without a write would take its frozen contents from the
// clones. It waits for a Discard that is dropping pages, so once it returns
// RAM may be write-protected.
func (m *Memory) KeepPages() {
	m.mu.Lock()
	m.keep = true
	m.mu.Unlock()
}

// Discard hands back b, guest RAM the guest reported free: its contents
// become zero. Until KeepPages it drops the whole pages, which gives the
// memory back to the host; after it, it writes zeros. Either way a fork
// sends the pages to no clone, which fills them locally as zero. The
// unaligned edges of b are zeroed.
func (m *Memory) Discard(b []byte) {
	if len(b) == 0 {
		return
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.keep {
		clear(b)
		return
	}
	start := uintptr(unsafe.Pointer(&b[0]))
	lo := int((PageSize - uint64(start)%PageSize) % PageSize)
	hi := len(b) - int((uint64(start)+uint64(len(b)))%PageSize)
	if lo >= hi {
		clear(b)
		return
	}
	clear(b[:lo])
	clear(b[hi:])
	if unix.Madvise(b[lo:hi], unix.MADV_DONTNEED) != nil {
		clear(b[lo:hi])
	}
}

// Size is the total RAM in bytes.
func (m *Memory) Size() uint64 { return m.size }

// Regions returns the RAM regions in ascending GPA order.
func (m *Memory) Regions() []Region { return m.regions }

// Slice returns the host bytes backing [gpa, gpa+n). The range must lie
// inside one region; anything else is ErrRange, never a wild pointer.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	for _, r := range m.regions {
		if gpa >= r.GPA && gpa-r.GPA < r.Size {
			off := gpa - r.GPA
			if n > r.Size-off {
				break
			}
			return r.Host[off : off+n : off+n], nil
		}
	}
	return nil, fmt.Errorf("%w: [%#x, +%#x)", ErrRange, gpa, n)
}

// ReadAt copies guest memory at gpa into p (io.ReaderAt semantics).
func (m *Memory) ReadAt(p []byte, gpa int64) (int, error) {
	if gpa < 0 {
		return 0, fmt.Errorf("%w: negative address", ErrRange)
	}
	s, err := m.Slice(uint64(gpa), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(p, s), nil
}

// WriteAt copies p into guest memory at gpa (io.WriterAt semantics).
func (m *Memory) WriteAt(p []byte, gpa int64) (int, error) {
	if gpa < 0 {
		return 0, fmt.Errorf("%w: negative address", ErrRange)
	}
	s, err := m.Slice(uint64(gpa), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(s, p), nil
}

// Close unmaps guest RAM. The Memory must not be used afterwards.
func (m *Memory) Close() error {
	var errs []error
	for _, r := range m.regions {
		errs = append(errs, unix.MunmapPtr(unsafe.Pointer(&r.Host[0]), uintptr(len(r.Host))))
	}
	m.regions = nil
	return errors.Join(errs...)
}

// MapFile replaces the contents of every region with a copy-on-write
// (MAP_PRIVATE) mapping of f, region i starting at offset offs[i]: the
// guest sees the file and its writes stay private. Holes in a sparse file
// read as zeros. f may be closed afterwards; it must not be truncated or
// rewritten in place while the guest runs (a truncated file makes guest
// accesses beyond its end fail).
func (m *Memory) MapFile(f *os.File, offs []int64) error {
	if len(offs) != len(m.regions) {
		return fmt.Errorf("map file: %d offsets for %d regions", len(offs), len(m.regions))
	}
	for i, r := range m.regions {
		if offs[i]%PageSize != 0 {
			return fmt.Errorf("map file: region %d offset %d is not page aligned", i, offs[i])
		}
		addr := uintptr(unsafe.Pointer(&r.Host[0]))
		got, _, e := unix.Syscall6(unix.SYS_MMAP, addr, uintptr(r.Size), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_FIXED|unix.MAP_NORESERVE, f.Fd(), uintptr(offs[i]))
		if e != 0 {
			return fmt.Errorf("map file over guest RAM at %#x: %w", r.GPA, e)
		}
		if got != addr {
			return fmt.Errorf("map file over guest RAM at %#x: mapped at %#x instead", r.GPA, got)
		}
	}
	m.remote = !localfs.Is(f)
	return nil
}

// RemoteFile says whether RAM is a mapping of a file off local storage
// (MapFile): a first touch of a page may then wait on a server.
func (m *Memory) RemoteFile() bool { return m.remote }
