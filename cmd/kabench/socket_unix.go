//go:build unix

// This file holds what nginx needs to reach an -upstream unix socket when
// kabench runs as root: nginx's workers then drop to another user, who
// must be able to open the socket.

package main

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// nginxUser returns nginx's user directive for upstream: empty unless
// kabench runs as root in front of a unix socket. Then the workers run as
// the socket's owner and group, as the app that made the socket does,
// instead of nginx's default nobody, who cannot open a socket in a
// private directory (mktemp -d makes one). If even the owner cannot reach
// the socket, the error names the directory that blocks it.
func nginxUser(upstream string) (string, error) {
	sock, ok := strings.CutPrefix(upstream, "unix:")
	if !ok || os.Geteuid() != 0 {
		return "", nil
	}
	st, err := os.Stat(sock)
	if err != nil {
		return "", fmt.Errorf("-upstream %s: %w", upstream, err)
	}
	if st.Mode()&os.ModeSocket == 0 {
		return "", fmt.Errorf("-upstream %s: %s is not a socket (%v)", upstream, sock, st.Mode())
	}
	sys := st.Sys().(*syscall.Stat_t)
	u, err := user.LookupId(strconv.FormatUint(uint64(sys.Uid), 10))
	if err != nil {
		return "", fmt.Errorf("-upstream %s: nginx's workers would run as the socket's owner, uid %d, which has no user name (%v): chown the socket to a user", upstream, sys.Uid, err)
	}
	g, err := user.LookupGroupId(strconv.FormatUint(uint64(sys.Gid), 10))
	if err != nil {
		return "", fmt.Errorf("-upstream %s: nginx's workers would run in the socket's group, gid %d, which has no name (%v): chgrp the socket to a group", upstream, sys.Gid, err)
	}
	gids, err := u.GroupIds()
	if err != nil {
		gids = []string{u.Gid}
	}
	if why := unreachable(sock, sys.Uid, gids); why != "" {
		return "", fmt.Errorf("-upstream %s: nginx's workers run as %s, the socket's owner, who %s", upstream, u.Username, why)
	}
	return fmt.Sprintf("user %s %s;", u.Username, g.Name), nil
}

// unreachable says why the user uid, in the groups gids, cannot connect
// to the socket sock: a directory on its path it may not search, or the
// socket it may not write to. It returns "" if nothing stops it.
func unreachable(sock string, uid uint32, gids []string) string {
	if uid == 0 {
		return ""
	}
	may := func(path string, bits os.FileMode) (bool, string) {
		st, err := os.Stat(path)
		if err != nil {
			return false, err.Error()
		}
		sys := st.Sys().(*syscall.Stat_t)
		shift := 0 // others
		switch {
		case sys.Uid == uid:
			shift = 6
		case slices.Contains(gids, strconv.FormatUint(uint64(sys.Gid), 10)):
			shift = 3
		}
		return st.Mode().Perm()&(bits<<shift) != 0, fmt.Sprintf("mode %v, owner uid %d, gid %d", st.Mode(), sys.Uid, sys.Gid)
	}
	abs, err := filepath.Abs(sock)
	if err != nil {
		return err.Error()
	}
	var dirs []string
	for d := filepath.Dir(abs); ; d = filepath.Dir(d) {
		dirs = append(dirs, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	slices.Reverse(dirs) // from the root down: the first that blocks
	for _, d := range dirs {
		if ok, mode := may(d, 0o1); !ok {
			return fmt.Sprintf("cannot search the directory %s (%s): allow it (chmod o+x %s, or a group of the owner), or put the socket elsewhere", d, mode, d)
		}
	}
	if ok, mode := may(abs, 0o2); !ok {
		return fmt.Sprintf("cannot write to it (%s): chmod u+w %s", mode, abs)
	}
	return ""
}
