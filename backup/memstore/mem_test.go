package memstore

import (
	"testing"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(*testing.T) backup.Store { return New() })
}

func TestRetainerConformance(t *testing.T) {
	storetest.RunRetainer(t, backup.LockCompliance, func(*testing.T) backup.Store { return New() })
}
