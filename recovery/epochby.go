package recovery

import (
	"context"
	"database/sql"
	"time"
)

// EpochBy says which epoch the partition q had reached by time t, as its
// epoch_times record it, looking only at epochs from from on (a
// partition's restorable range starts at its commit epoch; the records
// below it are gone).
//
// The partition records the time of every rise of its frontier, so for
// every epoch e >= from, EpochTime(e) is exact: the time of the rise that
// crossed e. reached is the newest epoch e >= from whose frontier time is
// at or before t (ok false: even from was reached after t). next is when
// the frontier rose past reached (the first recorded time after t; zero
// if the partition records none). Times are compared in whole
// milliseconds, as they are recorded.
func EpochBy(ctx context.Context, q queryer, from Epoch, t time.Time) (reached Epoch, ok bool, next time.Time, err error) {
	ms := t.UnixMilli()
	var e sql.NullInt64
	if err := q.QueryRowContext(ctx, `SELECT max(epoch) FROM epoch_times WHERE epoch >= ? AND unix_ms <= ?`, from, ms).Scan(&e); err != nil {
		return 0, false, time.Time{}, err
	}
	var n sql.NullInt64
	if err := q.QueryRowContext(ctx, `SELECT min(unix_ms) FROM epoch_times WHERE epoch >= ? AND unix_ms > ?`, from, ms).Scan(&n); err != nil {
		return 0, false, time.Time{}, err
	}
	if n.Valid {
		next = time.UnixMilli(n.Int64).UTC()
	}
	if !e.Valid {
		return 0, false, next, nil
	}
	return Epoch(e.Int64), true, next, nil
}
