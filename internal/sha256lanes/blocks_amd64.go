//go:build amd64 && !purego

package sha256lanes

import "golang.org/x/sys/cpu"

// blocks3 hashes p's whole 64-byte blocks into the three states of dig.
//
//go:noescape
func blocks3(dig *[Lanes][8]uint32, p []byte)

func cpuid(leaf, sub uint32) (a, b, c, d uint32)

// hasSHANI says whether the CPU has the SHA extensions (CPUID.7.0:EBX[29])
// and the rest blocks3 uses (SSSE3, SSE4.1 and AVX, which cpu checks the
// OS saves).
func hasSHANI() bool {
	if !cpu.X86.HasAVX || !cpu.X86.HasSSSE3 || !cpu.X86.HasSSE41 {
		return false
	}
	if max, _, _, _ := cpuid(0, 0); max < 7 {
		return false
	}
	_, b, _, _ := cpuid(7, 0)
	return b&(1<<29) != 0
}

var useSHANI = hasSHANI()

func blocks(dig *[Lanes][8]uint32, p []byte) {
	if useSHANI {
		blocks3(dig, p)
		return
	}
	blocksGeneric(dig, p)
}
