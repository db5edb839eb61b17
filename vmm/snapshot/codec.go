package snapshot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
)

// The codec turns a value of plain data into bytes and back, by reflection:
//
//	bool                      1 byte, 0 or 1
//	int8/uint8                1 byte
//	int16/uint16              2 bytes, little-endian
//	int32/uint32              4 bytes, little-endian
//	int64/uint64/int/uint     8 bytes, little-endian (two's complement)
//	string, []T               uvarint length, then the bytes / elements
//	[N]T                      N elements, no length
//	struct                    fields in declaration order; blank (_) fields
//	                          are not written and decode as zero
//
// There are no type tags and no field names: the Go type is the schema, and
// Version says which schema a descriptor was written with. Maps, pointers,
// interfaces, funcs, chans, floats, uintptrs and unexported named fields are
// refused, because they are either not state or have no one canonical
// encoding; so are recursive types. Decoding is strict, so that exactly one byte string decodes to a
// given value: a bool is 0 or 1, a uvarint is minimal, nothing trails.

// pathError names where in the value an encoding or decoding step failed.
type pathError struct {
	path string
	err  error
}

func (e *pathError) Error() string { return e.path + ": " + e.err.Error() }
func (e *pathError) Unwrap() error { return e.err }

// under prefixes elem to the path of err. It runs only on failure, so that a
// successful decode builds no path strings.
func under(elem string, err error) error {
	var pe *pathError
	if errors.As(err, &pe) {
		pe.path = elem + pe.path
		return err
	}
	return &pathError{path: elem, err: err}
}

// checkType refuses types that are not plain data. It walks the type rather
// than a value, so that a bad field is reported even while its slice is
// empty. It also refuses recursive types (struct{ Kids []T }): machine state
// has none, and without them the type bounds how deeply decoding recurses,
// whatever the input. active holds the structs on the current path.
func checkType(t reflect.Type, active map[reflect.Type]bool) error {
	switch t.Kind() {
	case reflect.Bool, reflect.String,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return nil
	case reflect.Array:
		if err := checkType(t.Elem(), active); err != nil {
			return under("[]", err)
		}
		return nil
	case reflect.Slice:
		if minSize(t.Elem()) == 0 {
			// Such elements encode to nothing, so the input could not
			// bound how many a length field asks for.
			return fmt.Errorf("slice of %s, which encodes to zero bytes", t.Elem())
		}
		if err := checkType(t.Elem(), active); err != nil {
			return under("[]", err)
		}
		return nil
	case reflect.Struct:
		if active[t] {
			return fmt.Errorf("%s contains itself", t)
		}
		active[t] = true
		defer delete(active, t)
		for i := range t.NumField() {
			f := t.Field(i)
			if f.Name == "_" {
				continue
			}
			if !f.IsExported() {
				return &pathError{"." + f.Name, errors.New("unexported field cannot be restored")}
			}
			if err := checkType(f.Type, active); err != nil {
				return under("."+f.Name, err)
			}
		}
		return nil
	}
	return fmt.Errorf("%s is a %s, not plain data", t, t.Kind())
}

// minSize is the fewest bytes any value of t encodes to.
func minSize(t reflect.Type) uint64 {
	switch t.Kind() {
	case reflect.Bool, reflect.Int8, reflect.Uint8, reflect.String, reflect.Slice:
		return 1
	case reflect.Int16, reflect.Uint16:
		return 2
	case reflect.Int32, reflect.Uint32:
		return 4
	case reflect.Int64, reflect.Uint64, reflect.Int, reflect.Uint:
		return 8
	case reflect.Array:
		return uint64(t.Len()) * minSize(t.Elem())
	case reflect.Struct:
		var n uint64
		for i := range t.NumField() {
			if f := t.Field(i); f.Name != "_" {
				n += minSize(f.Type)
			}
		}
		return n
	}
	return 0
}

// structPointer returns the struct v points to, or an error naming what v is.
// name is what error messages call the root of the value.
func structPointer(v any, name string) (reflect.Value, error) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		return reflect.Value{}, fmt.Errorf("%s is %T, want a non-nil pointer to a struct", name, v)
	}
	if err := checkType(rv.Elem().Type(), map[reflect.Type]bool{}); err != nil {
		return reflect.Value{}, under(name, err)
	}
	return rv.Elem(), nil
}

// Schema describes the encoding of *state, as Encode takes it: the fields
// in declaration order, one a line, each with its name and encoded type,
// nested structs, arrays and slices spelled out. Any change to the
// encoding changes it, and so does a renamed field, which the encoding
// alone would not show; a test pins it to catch a change made without a
// Version bump. Go type names are left out, since renaming or moving a
// type changes nothing in the encoding, and int and uint read as the
// int64 and uint64 they encode as. Blank fields are left out too.
func Schema(state any) (string, error) {
	rv, err := structPointer(state, "state")
	if err != nil {
		return "", fmt.Errorf("schema: %w", err)
	}
	return string(appendSchema(nil, rv.Type(), 0)) + "\n", nil
}

// appendSchema appends the schema of t, a checked type, at nesting depth.
func appendSchema(b []byte, t reflect.Type, depth int) []byte {
	switch t.Kind() {
	case reflect.Int:
		return append(b, "int64"...)
	case reflect.Uint:
		return append(b, "uint64"...)
	case reflect.Array:
		return appendSchema(fmt.Appendf(b, "[%d]", t.Len()), t.Elem(), depth)
	case reflect.Slice:
		return appendSchema(append(b, "[]"...), t.Elem(), depth)
	case reflect.Struct:
		b = append(b, "struct {"...)
		fields := 0
		for i := range t.NumField() {
			f := t.Field(i)
			if f.Name == "_" {
				continue
			}
			b = append(b, '\n')
			b = append(b, strings.Repeat("\t", depth+1)...)
			b = append(b, f.Name+" "...)
			b = appendSchema(b, f.Type, depth+1)
			fields++
		}
		if fields > 0 {
			b = append(b, '\n')
			b = append(b, strings.Repeat("\t", depth)...)
		}
		return append(b, '}')
	}
	return append(b, t.Kind().String()...)
}

// marshal appends the encoding of *v to b.
func marshal(b []byte, v any, name string) ([]byte, error) {
	rv, err := structPointer(v, name)
	if err != nil {
		return nil, err
	}
	return encodeValue(b, rv), nil
}

// encodeValue appends v's encoding. The type was checked, so it cannot fail.
func encodeValue(b []byte, v reflect.Value) []byte {
	le := binary.LittleEndian
	switch v.Kind() {
	case reflect.Bool:
		if v.Bool() {
			return append(b, 1)
		}
		return append(b, 0)
	case reflect.Int8:
		return append(b, byte(v.Int()))
	case reflect.Int16:
		return le.AppendUint16(b, uint16(v.Int()))
	case reflect.Int32:
		return le.AppendUint32(b, uint32(v.Int()))
	case reflect.Int64, reflect.Int:
		return le.AppendUint64(b, uint64(v.Int()))
	case reflect.Uint8:
		return append(b, byte(v.Uint()))
	case reflect.Uint16:
		return le.AppendUint16(b, uint16(v.Uint()))
	case reflect.Uint32:
		return le.AppendUint32(b, uint32(v.Uint()))
	case reflect.Uint64, reflect.Uint:
		return le.AppendUint64(b, v.Uint())
	case reflect.String:
		b = binary.AppendUvarint(b, uint64(v.Len()))
		return append(b, v.String()...)
	case reflect.Slice:
		b = binary.AppendUvarint(b, uint64(v.Len()))
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return append(b, v.Bytes()...)
		}
		for i := range v.Len() {
			b = encodeValue(b, v.Index(i))
		}
		return b
	case reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 && v.CanAddr() {
			return append(b, v.Bytes()...)
		}
		for i := range v.Len() {
			b = encodeValue(b, v.Index(i))
		}
		return b
	case reflect.Struct:
		t := v.Type()
		for i := range v.NumField() {
			if t.Field(i).Name != "_" {
				b = encodeValue(b, v.Field(i))
			}
		}
		return b
	}
	panic("snapshot: encode unchecked kind " + v.Kind().String())
}

// unmarshal decodes all of b into *v. On failure *v is left as it was; an
// error about b wraps ErrCorrupt, one about v's type does not.
func unmarshal(b []byte, v any, name string) error {
	rv, err := structPointer(v, name)
	if err != nil {
		return err
	}
	d := decoder{b: b}
	nv := reflect.New(rv.Type()).Elem()
	if err := d.value(nv); err != nil {
		return fmt.Errorf("%w: %w", ErrCorrupt, under(name, err))
	}
	if len(d.b) != 0 {
		return fmt.Errorf("%w: %d bytes of trailing garbage after %s", ErrCorrupt, len(d.b), name)
	}
	rv.Set(nv)
	return nil
}

// decoder consumes b from the front.
type decoder struct{ b []byte }

var errShort = errors.New("truncated")

func (d *decoder) take(n uint64) ([]byte, error) {
	if n > uint64(len(d.b)) {
		return nil, errShort
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p, nil
}

func (d *decoder) fixed(size int) (uint64, error) {
	p, err := d.take(uint64(size))
	if err != nil {
		return 0, err
	}
	var x uint64
	for i := size - 1; i >= 0; i-- {
		x = x<<8 | uint64(p[i])
	}
	return x, nil
}

// uvarint reads a minimal uvarint.
func (d *decoder) uvarint() (uint64, error) {
	x, n := binary.Uvarint(d.b)
	switch {
	case n == 0:
		return 0, errShort
	case n < 0:
		return 0, errors.New("uvarint overflows 64 bits")
	case n > 1 && d.b[n-1] == 0:
		return 0, errors.New("uvarint is not minimal")
	}
	d.b = d.b[n:]
	return x, nil
}

// length reads a length of elements of at least min bytes each, bounded by
// the input left, so that no length field makes the decoder allocate more
// than the input could fill.
func (d *decoder) length(min uint64) (int, error) {
	n, err := d.uvarint()
	if err != nil {
		return 0, err
	}
	if left := uint64(len(d.b)); n > left/min {
		return 0, fmt.Errorf("length %d exceeds what the %d bytes left can hold", n, left)
	}
	return int(n), nil
}

// value decodes into v, which is a settable zero value of a checked type.
func (d *decoder) value(v reflect.Value) error {
	switch k := v.Kind(); k {
	case reflect.Bool:
		x, err := d.fixed(1)
		if err != nil {
			return err
		}
		if x > 1 {
			return fmt.Errorf("bool byte is %d", x)
		}
		v.SetBool(x == 1)
	case reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Int:
		x, err := d.fixed(int(minSize(v.Type())))
		if err != nil {
			return err
		}
		var s int64
		switch k {
		case reflect.Int8:
			s = int64(int8(x))
		case reflect.Int16:
			s = int64(int16(x))
		case reflect.Int32:
			s = int64(int32(x))
		default:
			s = int64(x)
		}
		if v.OverflowInt(s) {
			return fmt.Errorf("%d overflows %s", s, v.Type())
		}
		v.SetInt(s)
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uint:
		x, err := d.fixed(int(minSize(v.Type())))
		if err != nil {
			return err
		}
		if v.OverflowUint(x) {
			return fmt.Errorf("%d overflows %s", x, v.Type())
		}
		v.SetUint(x)
	case reflect.String:
		n, err := d.length(1)
		if err != nil {
			return err
		}
		p, _ := d.take(uint64(n))
		v.SetString(string(p))
	case reflect.Slice:
		et := v.Type().Elem()
		n, err := d.length(minSize(et))
		if err != nil || n == 0 {
			return err // a zero length decodes as nil
		}
		if et.Kind() == reflect.Uint8 {
			p, _ := d.take(uint64(n))
			v.Set(reflect.MakeSlice(v.Type(), n, n))
			copy(v.Bytes(), p) // a copy: the value must not alias the input
			return nil
		}
		s := reflect.MakeSlice(v.Type(), n, n)
		for i := range n {
			if err := d.value(s.Index(i)); err != nil {
				return under(fmt.Sprintf("[%d]", i), err)
			}
		}
		v.Set(s)
	case reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			p, err := d.take(uint64(v.Len()))
			if err != nil {
				return err
			}
			copy(v.Bytes(), p)
			return nil
		}
		for i := range v.Len() {
			if err := d.value(v.Index(i)); err != nil {
				return under(fmt.Sprintf("[%d]", i), err)
			}
		}
	case reflect.Struct:
		t := v.Type()
		for i := range v.NumField() {
			if f := t.Field(i); f.Name != "_" {
				if err := d.value(v.Field(i)); err != nil {
					return under("."+f.Name, err)
				}
			}
		}
	default:
		panic("snapshot: decode unchecked kind " + k.String())
	}
	return nil
}
