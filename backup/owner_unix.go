//go:build unix

package backup

import (
	"os"
	"syscall"
)

// keyOwner is who a new chunk key in dir must belong to: dir's owner when
// this process runs as root (a cron backup as root must not leave a chunk
// key the agent, running as the partitions' user, cannot read), else -1,
// -1 (whoever creates it).
func keyOwner(dir string) (uid, gid int, err error) {
	if os.Geteuid() != 0 {
		return -1, -1, nil
	}
	st, err := os.Stat(dir)
	if err != nil {
		return -1, -1, err
	}
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok || s.Uid == 0 {
		return -1, -1, nil
	}
	return int(s.Uid), int(s.Gid), nil
}
