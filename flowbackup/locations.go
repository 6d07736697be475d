package flowbackup

import (
	"context"
	"fmt"
	"strings"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/storeurl"
)

// Several backup locations (restore --from A --from B): copies of one
// flow's backups, read together (see restore.RestoreFrom).

// splitLocations turns --from values into URLs. The flag is repeatable;
// a value from the environment or the config file that lists several
// URLs comma-separated (from: [A, B] in the file) is split, but only when
// every part is a URL itself (a URL may hold a comma).
func splitLocations(vals []string) []string {
	var out []string
	for _, v := range vals {
		parts := strings.Split(v, ",")
		whole := len(parts) > 1
		for _, p := range parts {
			whole = whole && storeurl.Check(strings.TrimSpace(p)) == nil
		}
		if !whole {
			out = append(out, v)
			continue
		}
		for _, p := range parts {
			out = append(out, strings.TrimSpace(p))
		}
	}
	return out
}

// openLocations opens each URL for reading. A URL that names no store is
// a usage error. One location is opened as always (its errors are the
// command's); of several, one that cannot be opened (missing, unreachable,
// access denied) is skipped with a note, as long as another one opens.
func (o storageOptions) openLocations(ctx context.Context, urls []string) ([]backup.Store, []string, error) {
	if len(urls) <= 1 {
		url := ""
		if len(urls) == 1 {
			url = urls[0]
		}
		s, err := o.open(ctx, url)
		if err != nil {
			return nil, nil, err
		}
		return []backup.Store{s}, nil, nil
	}
	seen := map[string]bool{}
	for _, u := range urls {
		if err := storeurl.Check(u); err != nil {
			return nil, nil, usageError{err}
		}
		if seen[u] {
			return nil, nil, usagef("--from %s is given twice", u)
		}
		seen[u] = true
	}
	var stores []backup.Store
	var notes []string
	var first error
	for _, u := range urls {
		s, err := o.open(ctx, u)
		if err != nil {
			if ctx.Err() != nil {
				closeAll(stores)
				return nil, nil, ctx.Err()
			}
			if first == nil {
				first = err
			}
			notes = append(notes, fmt.Sprintf("location %s cannot be opened (%v): skipped", u, err))
			continue
		}
		stores = append(stores, s)
	}
	if len(stores) == 0 {
		return nil, notes, fmt.Errorf("none of the %d locations can be opened; the first: %w", len(urls), first)
	}
	return stores, notes, nil
}

func closeAll(stores []backup.Store) {
	for _, s := range stores {
		s.Close()
	}
}

// resolveFlowIn is resolveFlow over several locations: the first that
// knows the flow decides; if none does, the first one's answer.
func resolveFlowIn(ctx context.Context, stores []backup.Store, flow string) (string, error) {
	var first error
	for _, s := range stores {
		uid, err := resolveFlow(ctx, s, flow)
		if err == nil {
			return uid, nil
		}
		if first == nil || len(stores) == 1 {
			first = err
		}
	}
	return "", first
}

// hasBackupsIn says whether any of stores holds a manifest (a location
// that cannot be listed counts as holding none, unless none can be).
func hasBackupsIn(ctx context.Context, stores []backup.Store) (bool, error) {
	var first error
	listed := false
	for _, s := range stores {
		any, err := hasBackups(ctx, s)
		if err == nil && any {
			return true, nil
		}
		listed = listed || err == nil
		if err != nil && first == nil {
			first = err
		}
	}
	if !listed {
		return false, first
	}
	return false, nil
}
