package agentapi

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// A stream that stops saying anything, heartbeats included, is cut off
// after its silence (Silence in use): an agent whose host is gone, or a
// partition.
func TestStreamSilence(t *testing.T) {
	r, w := io.Pipe()
	go w.Write(Event{Alive: true}.Encode())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-ctx.Done()
		r.CloseWithError(ctx.Err()) // as an HTTP body does when its request is cancelled
	}()
	start := time.Now()
	events := 0
	const silence = time.Second
	err := readStream(r, silence, cancel, func(Event) bool { events++; return false })
	if !errors.Is(err, errSilent) {
		t.Fatalf("silent stream: %v, want errSilent", err)
	}
	if d := time.Since(start); d < silence || d > silence+2*time.Second {
		t.Errorf("cut off after %v, want %v", d, silence)
	}
	if events != 1 {
		t.Errorf("%d events before the silence, want 1", events)
	}
}

// A malformed event ends the stream with an error naming it.
func TestStreamBadEvent(t *testing.T) {
	r, w := io.Pipe()
	go w.Write([]byte("{not json\n"))
	err := readStream(r, Silence, func() {}, func(Event) bool { return false })
	if err == nil || !strings.HasPrefix(err.Error(), "bad event") {
		t.Fatalf("bad event: %v", err)
	}
}
