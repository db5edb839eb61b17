package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
)

// logger is a subcommand's logger: sfvmm's own messages (not the guest's
// console) go through log/slog, to stderr.
type logger struct{ *slog.Logger }

func (l logger) Infof(format string, a ...any)  { l.Info(fmt.Sprintf(format, a...)) }
func (l logger) Errorf(format string, a ...any) { l.Error(fmt.Sprintf(format, a...)) }

// logFlags are the logging flags of the commands that run a machine.
type logFlags struct{ level, format *string }

func addLogFlags(fs interface {
	String(name, value, usage string) *string
}) logFlags {
	return logFlags{
		level:  fs.String("log-level", "info", "least severe of sfvmm's messages to print: debug, info, warn or error"),
		format: fs.String("log-format", "text", "sfvmm's messages as text lines or as JSON objects (json), one per line"),
	}
}

// args passes the flags on to a clone, which logs as its parent does.
func (f logFlags) args() []string {
	return []string{"--log-level", *f.level, "--log-format", *f.format}
}

// logger builds the logger the flags ask for; prefix starts each text line
// and names the command in JSON.
func (f logFlags) logger(prefix string) (logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(*f.level)); err != nil {
		return logger{}, fmt.Errorf("--log-level %q: want debug, info, warn or error", *f.level)
	}
	switch *f.format {
	case "text":
		return logger{slog.New(&textHandler{prefix: prefix, level: level, w: os.Stderr, mu: &sync.Mutex{}})}, nil
	case "json":
		h := slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})
		return logger{slog.New(h).With("cmd", strings.TrimSuffix(prefix, ": "))}, nil
	}
	return logger{}, fmt.Errorf("--log-format %q: want text or json", *f.format)
}

// newLogger is the logger of a command without logging flags: text, from
// info up.
func newLogger(prefix string) logger {
	return logger{slog.New(&textHandler{prefix: prefix, level: slog.LevelInfo, w: os.Stderr, mu: &sync.Mutex{}})}
}

// textHandler writes a record as one line: the command's prefix, the level
// where it is not info ("error: ", "warning: ", "debug: "), the message,
// then its attributes as key=value.
type textHandler struct {
	prefix string
	level  slog.Leveler
	w      io.Writer
	mu     *sync.Mutex
	attrs  string // preformatted, from WithAttrs
	group  string // key prefix, from WithGroup
}

func (h *textHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level.Level() }

func (h *textHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(h.prefix)
	switch {
	case r.Level >= slog.LevelError:
		b.WriteString("error: ")
	case r.Level >= slog.LevelWarn:
		b.WriteString("warning: ")
	case r.Level < slog.LevelInfo:
		b.WriteString("debug: ")
	}
	b.WriteString(r.Message)
	b.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		writeAttr(&b, h.group, a)
		return true
	})
	b.WriteByte('\n')
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := io.WriteString(h.w, b.String())
	return err
}

func writeAttr(b *strings.Builder, group string, a slog.Attr) {
	if a.Equal(slog.Attr{}) {
		return
	}
	fmt.Fprintf(b, " %s%s=%v", group, a.Key, a.Value.Resolve())
}

func (h *textHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h2 := *h
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range as {
		writeAttr(&b, h.group, a)
	}
	h2.attrs = b.String()
	return &h2
}

func (h *textHandler) WithGroup(name string) slog.Handler {
	h2 := *h
	h2.group = h.group + name + "."
	return &h2
}
