package backup

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"filippo.io/age"

	"github.com/flowkeep/flowkeep/internal/fsync"
)

// ChunkKeyFile is the file, in a recovery directory, that holds the chunk
// key its partitions' encrypted backups are named with (mode 0600). It is
// no more secret than the partitions beside it, which hold the state in the
// clear. Backup creates it; restore writes the one the restored backups
// used, so the next backup continues their chain.
const ChunkKeyFile = "flowkeep-backup.key"

const chunkKeyFormat = "flowkeep-chunk-key/1"

type keyFile struct {
	Format string `json:"format"`
	Key    []byte `json:"key"`
	// Recipients is the fingerprint of the recipient set the key serves: a
	// new set gets a new key (see Cipher).
	Recipients string    `json:"recipients"`
	Created    time.Time `json:"created"`
}

// SealerFor returns the Cipher that backs up dir's partitions to
// recipients: with dir's chunk key, or with a new one (written to dir, and
// owned by dir's owner) if dir has none or has one made for another
// recipient set.
func SealerFor(dir string, recipients []age.Recipient, now time.Time) (*Cipher, error) {
	fp, err := RecipientsFingerprint(recipients)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, ChunkKeyFile)
	kf, err := readKeyFile(path)
	if err != nil {
		return nil, err
	}
	if kf != nil && kf.Recipients == fp {
		return newSealer(recipients, fp, kf.Key)
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	fresh := keyFile{Format: chunkKeyFormat, Key: secret, Recipients: fp, Created: now.UTC()}
	data, _ := json.Marshal(fresh)
	uid, gid, err := keyOwner(dir)
	if err != nil {
		return nil, fmt.Errorf("give the chunk key to the owner of %s: %w", dir, err)
	}
	// The owner is set through the new file's descriptor before the file
	// is named: a chown by name, in a directory its owner can change,
	// would follow a symlink swapped in for the key.
	err = fsync.WriteFileOwned(path, data, 0o600, kf != nil, uid, gid)
	if errors.Is(err, os.ErrExist) {
		// Another backup of this directory made one first: use it.
		if kf, err = readKeyFile(path); err != nil {
			return nil, err
		}
		if kf == nil || kf.Recipients != fp {
			return nil, fmt.Errorf("chunk key %s changed while it was created: run the backup again", path)
		}
		return newSealer(recipients, fp, kf.Key)
	}
	if err != nil {
		return nil, fmt.Errorf("store the chunk key: %w", err)
	}
	return newSealer(recipients, fp, secret)
}

func readKeyFile(path string) (*keyFile, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the chunk key: %w", err)
	}
	var kf keyFile
	if err := json.Unmarshal(b, &kf); err != nil || kf.Format != chunkKeyFormat || len(kf.Key) != 32 {
		return nil, fmt.Errorf("chunk key %s is damaged: remove it (the next backup makes a new key and a full base)", path)
	}
	return &kf, nil
}

// ChunkKeyContents is the ChunkKeyFile (mode 0600) that continues the
// chain of an opened, encrypted manifest: restore writes it beside the
// partitions it lays down. A plaintext manifest has none (nil).
func ChunkKeyContents(m *Manifest) []byte {
	c := m.Cipher()
	if c == nil || c.key == nil || m.Encryption == nil {
		return nil
	}
	data, _ := json.Marshal(keyFile{Format: chunkKeyFormat, Key: c.key.secret, Recipients: m.Encryption.Recipients, Created: m.Created})
	return data
}
