package gcs

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"

	"github.com/flowkeep/flowkeep/backup"
)

// GCS object retention. The bucket must have object retention enabled
// (gcloud storage buckets create --enable-per-object-retention; the
// gcs-bucket module's object_retention), which only a bucket's creation
// can turn on. COMPLIANCE is a "Locked" retention (nobody can shorten or
// remove it), GOVERNANCE an "Unlocked" one (a principal with
// storage.objects.overrideUnlockedRetention can). A retained object can be
// neither deleted nor replaced, so nothing is ever hidden: Undelete has
// nothing to do.
//
// A bucket retention policy (every object kept N days from its creation)
// does not fit a flowkeep location: locks, latest pointers and heartbeats
// are rewritten or deleted in normal work, and could not be.

var _ backup.Retainer = (*Store)(nil)

// ObjectLockPermissions are the permissions the agent needs on top of
// RequiredPermissions with --object-lock: setting a retention on a new
// object and lengthening one (storage.objects.setRetention). With it, the
// agent's identity needs storage.objects.delete only on its locks/ and
// quarantine/ objects.
var ObjectLockPermissions = []string{
	"storage.objects.setRetention",
}

func gcsMode(m backup.LockMode) string {
	if m == backup.LockCompliance {
		return "Locked"
	}
	return "Unlocked"
}

// retentionOf is an object's retention as backup names it.
func retentionOf(r *storage.ObjectRetention) backup.Retention {
	if r == nil || r.RetainUntil.IsZero() {
		return backup.Retention{}
	}
	mode := backup.LockGovernance
	if r.Mode == "Locked" {
		mode = backup.LockCompliance
	}
	return backup.Retention{Mode: mode, Until: r.RetainUntil}
}

// PutRetained implements backup.Retainer: one upload with a DoesNotExist
// precondition and the retention.
func (s *Store) PutRetained(ctx context.Context, key string, data []byte, r backup.Retention) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	w := s.bucket.Object(k).If(storage.Conditions{DoesNotExist: true}).NewWriter(ctx)
	w.ChunkSize = 0 // one request
	w.Retention = &storage.ObjectRetention{Mode: gcsMode(r.Mode), RetainUntil: ceilSecond(r.Until)}
	if _, err := w.Write(data); err != nil {
		w.Close()
		return s.wrap("put", key, err)
	}
	if err := w.Close(); err != nil {
		return s.wrap("put", key, err)
	}
	return nil
}

// SetRetention implements backup.Retainer with an object metadata update.
func (s *Store) SetRetention(ctx context.Context, key string, r backup.Retention) error {
	k, err := s.key(key)
	if err != nil {
		return err
	}
	_, err = s.bucket.Object(k).Update(ctx, storage.ObjectAttrsToUpdate{Retention: &storage.ObjectRetention{Mode: gcsMode(r.Mode), RetainUntil: ceilSecond(r.Until)}})
	if err != nil {
		return s.wrap("lock", key, err)
	}
	return nil
}

// Undelete implements backup.Retainer: a retained object cannot be deleted
// or replaced, so none is ever hidden.
func (s *Store) Undelete(context.Context, string, func(string)) (int, error) { return 0, nil }

// lockError maps GCS's retention answers: a retention on a bucket without
// object retention, and a delete or overwrite refused by a retention.
func lockError(what string, err error) error {
	var ge *googleapi.Error
	if !errors.As(err, &ge) || !strings.Contains(strings.ToLower(ge.Message), "retention") {
		return nil
	}
	switch ge.Code {
	case http.StatusBadRequest:
		return fmt.Errorf("gcs: %s: %w: enable object retention on the bucket (%s)", what, backup.ErrNoObjectLock, ge.Message)
	case http.StatusForbidden:
		return fmt.Errorf("gcs: %s: %w (%s)", what, backup.ErrObjectLocked, ge.Message)
	}
	return nil
}

// ceilSecond is t rounded up to a whole second: servers keep locks to the
// second, and a lock must never end before the time asked for.
func ceilSecond(t time.Time) time.Time {
	t = t.UTC()
	if c := t.Truncate(time.Second); !c.Equal(t) {
		return c.Add(time.Second)
	}
	return t
}
