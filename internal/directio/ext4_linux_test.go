package directio

import "syscall"

// onExt4 reports whether dir is on ext4, which takes direct I/O.
func onExt4(dir string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(dir, &st) == nil && st.Type == 0xEF53
}
