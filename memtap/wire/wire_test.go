package wire

import (
	"bytes"
	"errors"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	var n Nonce
	n[0], n[31] = 1, 2
	tests := []struct {
		name   string
		enc    []byte
		decode func([]byte) (any, error)
		want   any
	}{
		{"hello", Hello{Nonce: n, Regions: []uint64{1, 1 << 20}}.Encode(),
			func(b []byte) (any, error) { return DecodeHello(b) }, Hello{Nonce: n, Regions: []uint64{1, 1 << 20}}},
		{"auth", Auth{Nonce: n, MAC: [32]byte{3}}.Encode(),
			func(b []byte) (any, error) { return DecodeAuth(b) }, Auth{Nonce: n, MAC: [32]byte{3}}},
		{"welcome", Welcome{Status: WelcomeRefused}.Encode(),
			func(b []byte) (any, error) { return DecodeWelcome(b) }, Welcome{Status: WelcomeRefused}},
		{"request", Request{Region: 1, First: 77, Count: MaxBatch, Tag: 9}.Append(nil),
			func(b []byte) (any, error) { return DecodeRequest(b) }, Request{Region: 1, First: 77, Count: MaxBatch, Tag: 9}},
		{"response", Response{Region: 2, First: 5, Count: 3, Tag: 4}.Append(nil),
			func(b []byte) (any, error) { return DecodeResponse(b) }, Response{Region: 2, First: 5, Count: 3, Tag: 4}},
		{"keep-alive", Alive(12).Append(nil),
			func(b []byte) (any, error) { return DecodeResponse(b) }, Response{First: 12, Status: StatusAlive}},
	}
	for _, tt := range tests {
		got, err := tt.decode(tt.enc)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		switch w := tt.want.(type) {
		case Hello:
			g := got.(Hello)
			if g.Nonce != w.Nonce || len(g.Regions) != len(w.Regions) || g.Regions[1] != w.Regions[1] {
				t.Errorf("%s: got %+v, want %+v", tt.name, got, w)
			}
		default:
			if got != tt.want {
				t.Errorf("%s: got %+v, want %+v", tt.name, got, tt.want)
			}
		}
	}
	h, err := ReadHello(bytes.NewReader(Hello{Nonce: n, Regions: []uint64{5, 6, 7}}.Encode()))
	if err != nil || len(h.Regions) != 3 || h.Regions[2] != 7 {
		t.Errorf("ReadHello: %+v, %v", h, err)
	}
}

func TestRefused(t *testing.T) {
	good := Request{Count: 1}.Append(nil)
	tests := []struct {
		name string
		err  error
	}{
		{"request short", func() error { _, err := DecodeRequest(good[:10]); return err }()},
		{"request magic", func() error {
			b := bytes.Clone(good)
			b[0] = 'X'
			_, err := DecodeRequest(b)
			return err
		}()},
		{"request zero pages", func() error { _, err := DecodeRequest(Request{}.Append(nil)); return err }()},
		{"request too many pages", func() error { _, err := DecodeRequest(Request{Count: MaxBatch + 1}.Append(nil)); return err }()},
		{"hello version", func() error {
			b := Hello{Regions: []uint64{1}}.Encode()
			b[4] = 9
			_, err := DecodeHello(b)
			return err
		}()},
		{"hello no regions", func() error { _, err := DecodeHello(Hello{}.Encode()); return err }()},
		{"hello empty region", func() error { _, err := DecodeHello(Hello{Regions: []uint64{0}}.Encode()); return err }()},
		{"hello trailing", func() error { _, err := DecodeHello(append(Hello{Regions: []uint64{1}}.Encode(), 0)); return err }()},
		{"welcome status", func() error { _, err := DecodeWelcome(Welcome{Status: 7}.Encode()); return err }()},
		{"response status", func() error { _, err := DecodeResponse(Response{Count: 1, Status: 9}.Append(nil)); return err }()},
		{"keep-alive with pages", func() error {
			_, err := DecodeResponse(Response{Count: 1, Status: StatusAlive}.Append(nil))
			return err
		}()},
		{"keep-alive with a tag", func() error { _, err := DecodeResponse(Response{Tag: 3, Status: StatusAlive}.Append(nil)); return err }()},
		{"flags", func() error { _, err := DataPages([]byte{PageData, 0}); return err }()},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, ErrMalformed) {
			t.Errorf("%s: got %v, want ErrMalformed", tt.name, tt.err)
		}
	}
}

func TestCheck(t *testing.T) {
	regions := []uint64{10, 4}
	tests := []struct {
		q  Request
		ok bool
	}{
		{Request{Region: 0, First: 0, Count: 10}, true},
		{Request{Region: 1, First: 3, Count: 1}, true},
		{Request{Region: 1, First: 3, Count: 2}, false},
		{Request{Region: 2, First: 0, Count: 1}, false},
		{Request{Region: 0, First: 1 << 63, Count: 1}, false},
		{Request{Region: 1 << 31, First: 0, Count: 1}, false},
	}
	for _, tt := range tests {
		if err := tt.q.Check(regions); (err == nil) != tt.ok {
			t.Errorf("Check(%+v) = %v, want ok=%t", tt.q, err, tt.ok)
		}
	}
}

func TestMAC(t *testing.T) {
	k1, _ := NewKey()
	k2, _ := NewKey()
	s, _ := NewNonce()
	c, _ := NewNonce()
	if ClientMAC(k1, s, c) != ClientMAC(k1, s, c) {
		t.Fatal("MAC is not deterministic")
	}
	if ClientMAC(k1, s, c) == ClientMAC(k2, s, c) {
		t.Error("different keys give the same MAC")
	}
	if ClientMAC(k1, s, c) == ServerMAC(k1, s, c) {
		t.Error("client and server proofs are the same: a reflected proof would pass")
	}
}

// FuzzDecode feeds arbitrary bytes to every decoder: none may panic, and
// whatever one accepts must encode back to the same bytes (one encoding
// per message, so nothing slips past a check by a second spelling).
func FuzzDecode(f *testing.F) {
	f.Add(Hello{Regions: []uint64{3, 4}}.Encode())
	f.Add(Auth{}.Encode())
	f.Add(Welcome{}.Encode())
	f.Add(Request{Region: 1, First: 2, Count: 3, Tag: 4}.Append(nil))
	f.Add(Response{Count: 2}.Append(nil))
	f.Add(Alive(7).Append(nil))
	f.Add([]byte{PageData, PageZero, PageAbsent})
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, err := DecodeHello(b); err == nil && !bytes.Equal(h.Encode(), b) {
			t.Errorf("hello %x re-encodes as %x", b, h.Encode())
		}
		if h, err := ReadHello(bytes.NewReader(b)); err == nil && !bytes.Equal(h.Encode(), b[:len(h.Encode())]) {
			t.Errorf("read hello %x re-encodes as %x", b, h.Encode())
		}
		if a, err := DecodeAuth(b); err == nil && !bytes.Equal(a.Encode(), b) {
			t.Errorf("auth %x re-encodes as %x", b, a.Encode())
		}
		if w, err := DecodeWelcome(b); err == nil && !bytes.Equal(w.Encode(), b) {
			t.Errorf("welcome %x re-encodes as %x", b, w.Encode())
		}
		if q, err := DecodeRequest(b); err == nil {
			if !bytes.Equal(q.Append(nil), b) {
				t.Errorf("request %x re-encodes as %x", b, q.Append(nil))
			}
			if q.Count == 0 || q.Count > MaxBatch {
				t.Errorf("request of %d pages accepted", q.Count)
			}
			_ = q.Check([]uint64{1, MaxRegionPages})
		}
		if r, err := DecodeResponse(b); err == nil && !bytes.Equal(r.Append(nil), b) {
			t.Errorf("response %x re-encodes as %x", b, r.Append(nil))
		}
		if n, err := DataPages(b); err == nil && n > len(b) {
			t.Errorf("%d data pages for %d flags", n, len(b))
		}
	})
}

func TestWelcomeGroup(t *testing.T) {
	w := Welcome{Status: WelcomeOK, MAC: [32]byte{1}, Group: [4]byte{239, 192, 3, 4}, Port: 40001}
	got, err := DecodeWelcome(w.Encode())
	if err != nil || got != w {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for _, bad := range []Welcome{
		{Group: [4]byte{10, 0, 0, 1}, Port: 1}, // not a multicast address
		{Group: [4]byte{239, 1, 1, 1}},         // no port
		{Port: 5},                              // no group
	} {
		if _, err := DecodeWelcome(bad.Encode()); !errors.Is(err, ErrMalformed) {
			t.Errorf("%+v: %v, want ErrMalformed", bad, err)
		}
	}
}

func TestRequestFlags(t *testing.T) {
	for _, q := range []Request{
		{Count: 3, Tag: 7, Flags: RequestUnicast},
		Report(1234),
	} {
		got, err := DecodeRequest(q.Append(nil))
		if err != nil || got != q {
			t.Errorf("round trip of %+v: %+v, %v", q, got, err)
		}
	}
	for _, q := range []Request{
		{Count: 1, Flags: RequestUnicast | RequestReport},
		{Count: 1, Flags: 1 << 7},
		{Count: 2, Flags: RequestReport},
		{Count: 1, Tag: 3, Flags: RequestReport},
	} {
		if _, err := DecodeRequest(q.Append(nil)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%+v: %v, want ErrMalformed", q, err)
		}
	}
	if _, err := DataPages([]byte{PageData, PageMulticast, PageZero}); err != nil {
		t.Errorf("PageMulticast flag refused: %v", err)
	}
}
