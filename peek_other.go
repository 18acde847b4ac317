//go:build !unix

package keepalive

import "net"

// closedUnderneath cannot tell on this platform (see peek_unix.go).
func closedUnderneath(net.Conn) (bool, error) { return false, nil }
