//go:build !amd64 || purego

package sha256lanes

var useSHANI = false

func hasSHANI() bool { return false }

func blocks(dig *[Lanes][8]uint32, p []byte) { blocksGeneric(dig, p) }
