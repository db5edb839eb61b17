package vmm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/sfvmm/sfvmm/virtio/blk"
	"github.com/sfvmm/sfvmm/vmm/disk"
)

// openDisks opens the images cfg.Devices.Disks names, for a machine New
// boots.
func (m *VM) openDisks() error {
	for i, d := range m.cfg.Devices.Disks {
		dk, err := disk.Open(d.Path, d.ReadOnly, "")
		if err != nil {
			return &ConfigError{"Disks", fmt.Errorf("disk %d: %w", i, err)}
		}
		m.disks = append(m.disks, dk)
	}
	return nil
}

// restoreDisks opens the frozen disks a state names, each with an overlay
// of the machine's own; relative layer paths are under rc.DiskDir.
func (m *VM) restoreDisks(s *MachineState, rc RestoreConfig) error {
	for i, st := range s.Disks {
		var src disk.Source
		if rc.DiskSource != nil {
			src = func(j int) (io.ReaderAt, error) { return rc.DiskSource(i, j) }
		}
		dk, err := disk.OpenStateFrom(st, rc.DiskDir, "", src)
		if err != nil {
			return fmt.Errorf("disk %d: %w", i, err)
		}
		m.disks = append(m.disks, dk)
	}
	return nil
}

// backends are the machine's disks as its block devices take them.
func (m *VM) backends() []blk.Backend {
	b := make([]blk.Backend, len(m.disks))
	for i, d := range m.disks {
		b[i] = d
	}
	return b
}

// FreezeDisks fixes every disk as it is now, for a fork's clones (see
// disk.Disk.Freeze). A hold must be in force, so that no request is
// being served.
func (m *VM) FreezeDisks() ([]disk.State, error) {
	var sts []disk.State
	for i, d := range m.disks {
		st, err := d.Freeze()
		if err != nil {
			return nil, fmt.Errorf("freeze disk %d: %w", i, err)
		}
		sts = append(sts, st)
	}
	return sts, nil
}

// UnlinkDiskOverlays removes the disks' overlay files, which stay open
// (disk.Disk.Unlink): for a clone, which never forks.
func (m *VM) UnlinkDiskOverlays() error {
	var errs []error
	for _, d := range m.disks {
		errs = append(errs, d.Unlink())
	}
	return errors.Join(errs...)
}

// CompactDisks folds each disk's frozen overlays (disk.Disk.Compact).
func (m *VM) CompactDisks() error {
	for i, d := range m.disks {
		if err := d.Compact(); err != nil {
			return fmt.Errorf("disk %d: %w", i, err)
		}
	}
	return nil
}

// MapDisks maps every layer of every disk read-only (disk.Disk.Map);
// unmap undoes it.
func (m *VM) MapDisks() (maps [][][]byte, unmap func(), err error) {
	unmap = func() {
		for _, layers := range maps {
			for _, l := range layers {
				unix.Munmap(l)
			}
		}
	}
	for i, d := range m.disks {
		layers, err := d.Map()
		if err != nil {
			unmap()
			return nil, nil, fmt.Errorf("disk %d: %w", i, err)
		}
		maps = append(maps, layers)
	}
	return maps, unmap, nil
}

// snapshotDisks are the states of the disks' copies in a snapshot
// (copyDisks), named relative to its directory.
func (m *VM) snapshotDisks() []disk.State {
	var sts []disk.State
	for i, d := range m.disks {
		sts = append(sts, disk.State{Size: d.Size(), ReadOnly: d.ReadOnly(), Layers: []disk.Layer{{Path: diskCopy(i)}}})
	}
	return sts
}

func diskCopy(i int) string { return fmt.Sprintf("disk%d.img", i) }

// copyDisks writes each disk as the guest sees it now into dir.
func (m *VM) copyDisks(dir string) error {
	for i, d := range m.disks {
		if err := d.CopyTo(filepath.Join(dir, diskCopy(i))); err != nil {
			return err
		}
	}
	return nil
}

// keepDiskCopies writes each disk as the guest left it to the
// RestoreConfig.KeepDisks directory, replacing an earlier run's.
func (m *VM) keepDiskCopies() error {
	if m.keepDisks == "" || len(m.disks) == 0 {
		return nil
	}
	if err := os.MkdirAll(m.keepDisks, 0o755); err != nil {
		return fmt.Errorf("keep disks: %w", err)
	}
	for i := range m.disks {
		os.Remove(filepath.Join(m.keepDisks, diskCopy(i)))
	}
	if err := m.copyDisks(m.keepDisks); err != nil {
		return fmt.Errorf("keep disks: %w", err)
	}
	return nil
}

// closeDisks closes the disks: a booted machine's writable images take
// back what was written to overlays since its forks.
func (m *VM) closeDisks() error {
	var errs []error
	for _, d := range m.disks {
		errs = append(errs, d.Close())
	}
	m.disks = nil
	return errors.Join(errs...)
}
