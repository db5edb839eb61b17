package main

import (
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Text lines keep the shape sfvmm has always printed ("sfvmm: error: ..."),
// and debug lines show only at --log-level debug.
func TestTextLog(t *testing.T) {
	for _, tc := range []struct {
		level slog.Level
		want  string
	}{
		{slog.LevelInfo, "sfvmm: booted\nsfvmm: warning: cache full path=/x\nsfvmm: error: it broke\n"},
		{slog.LevelDebug, "sfvmm: debug: pio bus: unclaimed\nsfvmm: booted\nsfvmm: warning: cache full path=/x\nsfvmm: error: it broke\n"},
		{slog.LevelError, "sfvmm: error: it broke\n"},
	} {
		var b strings.Builder
		l := slog.New(&textHandler{prefix: "sfvmm: ", level: tc.level, w: &b, mu: &sync.Mutex{}})
		l.Debug("pio bus: unclaimed")
		l.Info("booted")
		l.Warn("cache full", "path", "/x")
		l.Error("it broke")
		if b.String() != tc.want {
			t.Errorf("at %v:\n%s\nwant\n%s", tc.level, b.String(), tc.want)
		}
	}
}

func TestLogFlags(t *testing.T) {
	for _, tc := range []struct{ level, format, err string }{
		{"debug", "json", ""},
		{"warn", "text", ""},
		{"loud", "text", `--log-level "loud"`},
		{"info", "xml", `--log-format "xml"`},
	} {
		_, err := logFlags{level: &tc.level, format: &tc.format}.logger("sfvmm: ")
		if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s/%s: %v, want %q", tc.level, tc.format, err, tc.err)
		}
	}
}
