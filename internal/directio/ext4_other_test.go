//go:build !linux

package directio

func onExt4(string) bool { return false }
