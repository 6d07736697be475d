// Package freeport finds free TCP addresses on 127.0.0.1 for tests that
// start servers or cluster processes.
package freeport

import (
	"fmt"
	"net"
)

// Addrs returns n distinct free "127.0.0.1:port" addresses. (A port can be
// taken again between this call and its use; callers retry on failure.)
func Addrs(n int) ([]string, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []string
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	return out, nil
}
