package api

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"syscall"
	"time"
)

// maxSockPath is the longest path a Unix socket address holds on Linux
// (sun_path is 108 bytes including the terminating NUL).
const maxSockPath = 107

// probeTimeout bounds the connect that tells a live server from a stale
// socket file.
const probeTimeout = time.Second

// listen claims path for a new socket and listens on it with mode 0600. It
// returns the socket file's identity so that Close removes only the file it
// created.
func listen(path string, logf func(string, ...any)) (net.Listener, os.FileInfo, error) {
	if len(path) > maxSockPath {
		return nil, nil, fmt.Errorf("socket path is %d bytes, longer than the %d a Unix socket allows", len(path), maxSockPath)
	}
	if err := clearStale(path, logf); err != nil {
		return nil, nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("listen: %w", err)
	}
	// Close removes the file itself, and only if it is still ours.
	ln.SetUnlinkOnClose(false)
	// The file is briefly created with the umask's mode; ownerListener
	// refuses anyone who connects in that window.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		os.Remove(path)
		return nil, nil, fmt.Errorf("chmod socket: %w", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		os.Remove(path)
		return nil, nil, fmt.Errorf("stat socket: %w", err)
	}
	return ownerListener{UnixListener: ln, uid: os.Getuid(), logf: logf}, fi, nil
}

// clearStale removes a socket file at path that no server answers on. It
// refuses a path held by a live server, and anything that is not a socket.
func clearStale(path string, logf func(string, ...any)) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; not replacing it", path)
	}
	c, err := net.DialTimeout("unix", path, probeTimeout)
	if err == nil {
		c.Close()
		return fmt.Errorf("%w (is another sfvmm running?)", ErrInUse)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		// A full backlog (timeout) or a permission error means someone
		// may well be there: leave the file alone.
		return fmt.Errorf("%w: probe: %w", ErrInUse, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	logf("api: removed stale socket %s", path)
	return nil
}

// removeIfSame removes path if it is still the file described by fi; a
// socket some later server put there is left alone.
func removeIfSame(path string, fi os.FileInfo) error {
	cur, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat socket: %w", err)
	}
	if !os.SameFile(cur, fi) {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove socket: %w", err)
	}
	return nil
}

// ownerListener accepts connections only from this process's user and root,
// by the peer credentials the kernel records at connect.
type ownerListener struct {
	*net.UnixListener
	uid  int
	logf func(string, ...any)
}

func (l ownerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		uid, err := peerUID(c)
		if err == nil && (uid == l.uid || uid == 0) {
			return c, nil
		}
		if err != nil {
			l.logf("api: refused connection: peer credentials: %v", err)
		} else {
			l.logf("api: refused connection from uid %d", uid)
		}
		c.Close()
	}
}

func peerUID(c *net.UnixConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *syscall.Ucred
	var credErr error
	if err := rc.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, credErr
	}
	return int(cred.Uid), nil
}
