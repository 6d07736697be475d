package recovery

import (
	"database/sql"
	"os"
	"path/filepath"
	"testing"
)

// A restore's image is opened by name: a name that leads nowhere fails,
// and no empty database appears there.
func TestOpenImageDB_NeverCreatesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing.sqlite3")
	for name, open := range map[string]func(string) error{
		"OpenImageDB":   func(p string) error { return ping(OpenImageDB(p)) },
		"OpenScratchDB": func(p string) error { return ping(OpenScratchDB(p)) },
	} {
		if err := open(path); err == nil {
			t.Errorf("%s opened a missing file", name)
		}
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Fatalf("%s created %s: %v", name, path, err)
		}
	}
}

func ping(db *sql.DB, err error) error {
	if err != nil {
		return err
	}
	defer db.Close()
	return db.Ping()
}
