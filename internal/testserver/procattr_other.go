//go:build !linux

package testserver

import "syscall"

// dieWithParent: only Linux can tie a child's life to its parent's; here a
// crashed test may leave its server running until Stop or a reboot.
func dieWithParent() *syscall.SysProcAttr { return nil }
