package core_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/core"
)

// undurable is a recovery whose epochs stop becoming durable after a few:
// WaitDurable fails from then on (as a cluster's recovery does when it can
// no longer tell its peers what it committed), while commits still go in.
type undurable struct {
	*memRecovery
	waits atomic.Int32
}

var errUndurable = errors.New("committed frontiers could not be announced")

func (u *undurable) WaitDurable(context.Context, core.Epoch) error {
	if u.waits.Add(1) > 3 {
		return errUndurable
	}
	return nil
}

// When pacing finds that recovery failed, the run fails with its error
// instead of going on without closing epochs.
func TestPacing_RecoveryFailureFailsTheRun(t *testing.T) {
	rec := &undurable{memRecovery: newMemRecovery()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src := genWords(2, 1_000_000, time.Millisecond) // far longer than the test
	_, err := core.Run(ctx, countFlow(src, newCollect[core.KV[int64]]()), core.Config{Workers: 1, EpochInterval: 5 * time.Millisecond, Recovery: rec})
	if !errors.Is(err, errUndurable) {
		t.Fatalf("run ended with %v, want the recovery's failure", err)
	}
}
