// Package snapshot is the on-disk format of a VM snapshot: a directory
// holding a descriptor (all machine state, no guest memory) and a sparse
// memory file (the populated guest pages). The VMM builds the machine state
// as a plain Go value (see "Plain data" below) and restores from it; this
// package encodes, checks and stores it, and moves pages between guest RAM
// and the memory file. It knows nothing of KVM or devices, and it is not the
// transport of descriptors or pages between hosts.
//
// # Descriptor
//
// All integers little-endian:
//
//	offset  size  field
//	0       8     magic "SFVMMSNP"
//	8       4     version (Version)
//	12      8     payload length N
//	20      N     payload
//	20+N    32    SHA-256 of bytes [0, 20+N)
//
// Readers check magic, then version (ErrVersion, before anything that a
// later version might frame differently), then that N accounts for every
// byte, then the checksum (ErrCorrupt for all but the version).
//
// The payload is the codec encoding (below) of this struct:
//
//	CPUs                uint32
//	MemBytes            uint64
//	CreatedUnixNano     int64
//	RequiredCPUFeatures []string
//	Memory []struct{ GPA, Size uint64; Pages []byte } // ascending GPA
//	State               []byte // the codec encoding of the VMM's value
//
// Pages is the region's page bitmap (Bitmap.MarshalBinary). The state is
// nested as bytes so that the header can be checked (Open, DecodeHeader)
// without knowing the VMM's state type.
//
// # Plain data
//
// The codec is positional, with no tags or field names: the Go type is the
// schema, and Version names it. (Schema spells a type's encoding out, field
// names included, so that a test can pin it for each Version.) Fixed-size
// integers are little-endian at their width (int and uint as 8 bytes),
// bools one byte 0 or 1, strings and slices a uvarint length then the bytes
// or elements, arrays their elements, structs their fields in declaration
// order. Blank (_) fields, such as the padding in kvm.Segment, are skipped
// and decode as zero. Maps, pointers, interfaces, funcs, chans, floats,
// unexported named fields and recursive types are refused with an error
// naming the field. Decoding is strict (minimal uvarints, bools 0 or 1, no
// trailing bytes), so a value has exactly one encoding; a zero-length slice
// decodes as nil. Every length is bounded by the input left before
// anything is allocated.
//
// # Page bitmaps
//
// One bit per 4 KiB page of a region says whether the memory file holds it.
// A bitmap encodes as a tag byte and the page count (uvarint), then either
// the lengths of alternating clear and set runs as uvarints, clear first
// (tag 0), or the raw bits, page i in bit i%8 of byte i/8 (tag 1), whichever
// is smaller. A few runs take a few bytes whatever the RAM size; the worst
// case is the raw bitmap plus a few bytes.
//
// # Memory file
//
// Region i occupies [off_i, off_i+size_i) of the file, where off_i is the
// sum of the sizes of the regions before it; page p of the region is at
// off_i + p*PageSize. Only pages marked in the bitmaps and not all zeroes
// are written; the rest are holes, so the file takes disk space for the
// populated pages only. Its length is the sum of the region sizes.
//
// # Writing and reading
//
// Write stores a snapshot atomically: both files go into dir.tmp-* beside
// dir, are synced, and the directory is renamed into place. Read decodes the
// descriptor; the restorer builds guest RAM to the layout in Header.Memory
// and calls Load, which copies the marked pages into it.
package snapshot
