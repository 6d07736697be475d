// Package machine names the machine a process runs on: its host name, as
// backups, locks and lineages record it, and a stable machine id that tells
// "the same machine after a restart" from "another machine holding copied
// files". It never fails: a machine without an id falls back to its name.
package machine

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
)

// HostEnv and IDEnv override the host name and machine id (a test that
// plays two machines on one, or a container whose /etc/machine-id is the
// image's and so shared by every container made from it).
const (
	HostEnv = "FLOWKEEP_HOST"
	IDEnv   = "FLOWKEEP_MACHINE_ID"
)

// Host is the machine's name as records show it.
func Host() string {
	if h := strings.TrimSpace(os.Getenv(HostEnv)); h != "" {
		return h
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "unknown-host"
	}
	return h
}

// ID is a stable id of this machine: a hash of systemd's machine id
// (/etc/machine-id, or D-Bus's copy), else of the host name. Only the hash
// is ever stored, so records never carry the machine id itself (which
// systemd asks to keep private).
func ID() string {
	src := strings.TrimSpace(os.Getenv(IDEnv))
	if src == "" {
		for _, p := range []string{"/etc/machine-id", "/var/lib/dbus/machine-id"} {
			if b, err := os.ReadFile(p); err == nil && len(strings.TrimSpace(string(b))) > 0 {
				src = "machine-id:" + strings.TrimSpace(string(b))
				break
			}
		}
	}
	if src == "" {
		src = "host:" + Host()
	}
	sum := sha256.Sum256([]byte("flowkeep machine\x00" + src))
	return hex.EncodeToString(sum[:8])
}
