package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// qmp is a minimal QEMU Machine Protocol client: JSON objects, one per
// line, over a Unix socket. Commands are synchronous; asynchronous events
// that arrive meanwhile are skipped.
type qmp struct {
	conn net.Conn
	r    *bufio.Reader
	next int // id of the next command
}

// dialQMP connects to QEMU's QMP socket and negotiates capabilities. Every
// read and write is bounded by timeout.
func dialQMP(path string, timeout time.Duration) (*qmp, error) {
	conn, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	q := &qmp{conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}
	conn.SetDeadline(time.Now().Add(timeout))
	var greeting map[string]json.RawMessage
	if err := q.readObj(&greeting); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp %s: greeting: %w", path, err)
	}
	if _, ok := greeting["QMP"]; !ok {
		conn.Close()
		return nil, fmt.Errorf("qmp %s: unexpected greeting", path)
	}
	if err := q.call("qmp_capabilities", nil, nil, timeout); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmp) close() { q.conn.Close() }

func (q *qmp) readObj(v any) error {
	b, err := q.r.ReadBytes('\n')
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// call runs one command and decodes its "return" into ret (if not nil).
func (q *qmp) call(cmd string, args, ret any, timeout time.Duration) error {
	q.next++
	id := q.next
	req := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	q.conn.SetDeadline(time.Now().Add(timeout))
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		var resp struct {
			ID     *int            `json:"id"`
			Event  string          `json:"event"`
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class, Desc string
			} `json:"error"`
		}
		if err := q.readObj(&resp); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return fmt.Errorf("qmp %s: no answer within %v", cmd, timeout)
			}
			return fmt.Errorf("qmp %s: %w", cmd, err)
		}
		switch {
		case resp.Event != "":
			continue
		case resp.ID == nil || *resp.ID != id:
			continue
		case resp.Error != nil:
			return fmt.Errorf("qmp %s: %s: %s", cmd, resp.Error.Class, resp.Error.Desc)
		}
		if ret != nil && resp.Return != nil {
			if err := json.Unmarshal(resp.Return, ret); err != nil {
				return fmt.Errorf("qmp %s: decode answer: %w", cmd, err)
			}
		}
		return nil
	}
}

// migrateInfo is the part of query-migrate's answer the bench reads.
type migrateInfo struct {
	Status      string `json:"status"`
	TotalTimeMs int64  `json:"total-time"`
	DowntimeMs  int64  `json:"downtime"`
	SetupTimeMs int64  `json:"setup-time"`
	ErrorDesc   string `json:"error-desc"`
	RAM         *struct {
		Transferred    int64 `json:"transferred"`
		Total          int64 `json:"total"`
		Duplicate      int64 `json:"duplicate"`
		Normal         int64 `json:"normal"`
		DirtySyncCount int64 `json:"dirty-sync-count"`
	} `json:"ram"`
}

// migrate starts a migration to uri and polls query-migrate until it
// completes, fails or timeout passes.
func (q *qmp) migrate(uri string, timeout time.Duration) (migrateInfo, error) {
	if err := q.call("migrate", map[string]any{"uri": uri}, nil, 30*time.Second); err != nil {
		return migrateInfo{}, err
	}
	deadline := time.Now().Add(timeout)
	for {
		var mi migrateInfo
		if err := q.call("query-migrate", nil, &mi, 30*time.Second); err != nil {
			return mi, err
		}
		switch mi.Status {
		case "completed":
			return mi, nil
		case "failed", "cancelled":
			return mi, fmt.Errorf("migration to %s %s: %s", uri, mi.Status, mi.ErrorDesc)
		}
		if time.Now().After(deadline) {
			return mi, fmt.Errorf("migration to %s not completed within %v (status %q)", uri, timeout, mi.Status)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
