//go:build unix

package keepalive

import (
	"errors"
	"net"
	"syscall"
)

// closedUnderneath reports whether the peer of nc, a connection with no
// request in flight, has already closed it or sent something unasked (a
// "408 Request Timeout" before its close): a non-blocking MSG_PEEK finds
// an end of stream, a reset or data pending. net/http's read loop would
// see it too and drop the connection, but only once it is scheduled; a
// request handed the connection before that would be written into the
// close. It reports false whenever it cannot tell.
func closedUnderneath(nc net.Conn) (closed bool, err error) {
	sc, ok := nc.(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		return false, nil
	}
	rc, rerr := sc.SyscallConn()
	if rerr != nil {
		return false, nil
	}
	var buf [1]byte
	// Control, not Read: net/http's read loop holds the read lock while
	// it waits, and MSG_DONTWAIT needs no readiness.
	cerr := rc.Control(func(fd uintptr) {
		n, _, perr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case perr == nil && n == 0:
			closed, err = true, errPeerClosed
		case perr == nil:
			closed = true // data nobody asked for: the connection is not usable
		case errors.Is(perr, syscall.ECONNRESET):
			closed, err = true, syscall.ECONNRESET
		}
	})
	if cerr != nil {
		return false, nil
	}
	return closed, err
}
