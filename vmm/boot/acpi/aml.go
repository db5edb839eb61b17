package acpi

import "fmt"

// AML opcodes and prefixes (ACPI 6.5, section 20.3). Only what the DSDT
// needs: named objects holding integers, strings, buffers and packages of
// integers, and devices in a scope.
const (
	amlZeroOp   = 0x00
	amlOneOp    = 0x01
	amlNameOp   = 0x08
	amlByte     = 0x0a
	amlWord     = 0x0b
	amlDWord    = 0x0c
	amlString   = 0x0d
	amlQWord    = 0x0e
	amlScopeOp  = 0x10
	amlBuffer   = 0x11
	amlPackage  = 0x12
	amlMethodOp = 0x14
	amlDualName = 0x2e
	amlNotifyOp = 0x86
	amlExtOp    = 0x5b
	amlDeviceOp = 0x82 // after amlExtOp
	amlRootChar = '\\'
	amlNameChar = '_' // pads short NameSegs
)

// amlInteger encodes v as the shortest integer object.
func amlInteger(v uint64) []byte {
	switch {
	case v == 0:
		return []byte{amlZeroOp}
	case v == 1:
		return []byte{amlOneOp}
	case v <= 0xff:
		return []byte{amlByte, byte(v)}
	case v <= 0xffff:
		return []byte{amlWord, byte(v), byte(v >> 8)}
	case v <= 0xffff_ffff:
		return []byte{amlDWord, byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}
	}
	b := []byte{amlQWord}
	for i := 0; i < 8; i++ {
		b = append(b, byte(v>>(8*i)))
	}
	return b
}

// amlPkgLength encodes the PkgLength of a body of n bytes. The encoded
// length counts its own bytes, so the encoding grows until it fits: one byte
// holds up to 63, and each further byte adds 8 bits above a 4-bit nibble.
func amlPkgLength(n int) ([]byte, error) {
	if n+1 <= 0x3f {
		return []byte{byte(n + 1)}, nil
	}
	for extra := 1; extra <= 3; extra++ {
		total := n + 1 + extra
		if total >= 1<<(4+8*extra) {
			continue
		}
		b := []byte{byte(extra<<6) | byte(total&0x0f)}
		for i := 0; i < extra; i++ {
			b = append(b, byte(total>>(4+8*i)))
		}
		return b, nil
	}
	return nil, fmt.Errorf("aml: package length %d exceeds 2^28", n)
}

// amlNameSeg encodes a root-relative 1-4 character name, padded with '_'.
func amlNameSeg(name string) ([]byte, error) {
	if len(name) == 0 || len(name) > 4 {
		return nil, fmt.Errorf("aml: name %q is not 1-4 characters", name)
	}
	for i, c := range []byte(name) {
		lead := c == '_' || (c >= 'A' && c <= 'Z')
		if !lead && (i == 0 || c < '0' || c > '9') {
			return nil, fmt.Errorf("aml: bad character %q in name %q", c, name)
		}
	}
	b := []byte(name)
	for len(b) < 4 {
		b = append(b, amlNameChar)
	}
	return b, nil
}

// amlName encodes Name(name, obj).
func amlName(name string, obj []byte) ([]byte, error) {
	seg, err := amlNameSeg(name)
	if err != nil {
		return nil, err
	}
	b := append([]byte{amlNameOp}, seg...)
	return append(b, obj...), nil
}

// amlIntPackage encodes Package(){v0, v1, ...} of integers.
func amlIntPackage(vals ...uint64) ([]byte, error) {
	if len(vals) > 0xff {
		return nil, fmt.Errorf("aml: package of %d elements exceeds 255", len(vals))
	}
	body := []byte{byte(len(vals))}
	for _, v := range vals {
		body = append(body, amlInteger(v)...)
	}
	pl, err := amlPkgLength(len(body))
	if err != nil {
		return nil, err
	}
	b := append([]byte{amlPackage}, pl...)
	return append(b, body...), nil
}

// amlPkg encodes op, then the PkgLength of body, then body.
func amlPkg(op []byte, body []byte) ([]byte, error) {
	pl, err := amlPkgLength(len(body))
	if err != nil {
		return nil, err
	}
	return append(append(op, pl...), body...), nil
}

// amlStringObj encodes a String object (ASCII, no NUL inside).
func amlStringObj(v string) []byte {
	return append(append([]byte{amlString}, v...), 0)
}

// amlBufferObj encodes Buffer(){b...}.
func amlBufferObj(b []byte) ([]byte, error) {
	return amlPkg([]byte{amlBuffer}, append(amlInteger(uint64(len(b))), b...))
}

// amlNamed is Name(name, obj) inside a device.
type amlNamed struct {
	name string
	obj  []byte
}

// amlDevice encodes Device(name){Name(...), ...}.
func amlDevice(name string, names ...amlNamed) ([]byte, error) {
	body, err := amlNameSeg(name)
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		b, err := amlName(n.name, n.obj)
		if err != nil {
			return nil, err
		}
		body = append(body, b...)
	}
	return amlPkg([]byte{amlExtOp, amlDeviceOp}, body)
}

// amlRootScope encodes Scope(\NAME){body}.
func amlRootScope(name string, body []byte) ([]byte, error) {
	seg, err := amlNameSeg(name)
	if err != nil {
		return nil, err
	}
	return amlPkg([]byte{amlScopeOp}, append(append([]byte{amlRootChar}, seg...), body...))
}

// amlMethod encodes Method(name, 0, NotSerialized){body}.
func amlMethod(name string, body []byte) ([]byte, error) {
	seg, err := amlNameSeg(name)
	if err != nil {
		return nil, err
	}
	return amlPkg([]byte{amlMethodOp}, append(append(seg, 0), body...))
}

// amlNotify encodes Notify(\\SCOPE.NAME, value).
func amlNotify(scope, name string, value uint64) ([]byte, error) {
	a, err := amlNameSeg(scope)
	if err != nil {
		return nil, err
	}
	b, err := amlNameSeg(name)
	if err != nil {
		return nil, err
	}
	out := append([]byte{amlNotifyOp, amlRootChar, amlDualName}, a...)
	return append(append(out, b...), amlInteger(value)...), nil
}
