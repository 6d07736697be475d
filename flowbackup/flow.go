package flowbackup

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/flowkeep/flowkeep/backup"
)

// resolveFlow turns --flow (a flow's uid, or its name when only one flow of
// that name has backups here) into a uid. A flow that is not here is a
// usage error (exit 3), not "not restorable": a typo must not page anyone
// with "backups lost".
func resolveFlow(ctx context.Context, s backup.Store, flow string) (string, error) {
	if flow == "" {
		return "", nil
	}
	cat, err := backup.LoadCatalog(ctx, s, 0)
	if err != nil {
		return "", err
	}
	names := map[string]string{} // uid -> name
	for _, m := range cat.Manifests {
		if names[m.Flow.UID] == "" {
			names[m.Flow.UID] = m.Flow.Name
		}
	}
	if _, ok := names[flow]; ok {
		return flow, nil
	}
	var match, all []string
	for uid, name := range names {
		if name == flow {
			match = append(match, uid)
		}
		if name == "" {
			name = "name sealed: the backups are encrypted"
		}
		all = append(all, fmt.Sprintf("%s (%s)", name, uid))
	}
	sort.Strings(match)
	sort.Strings(all)
	switch len(match) {
	case 1:
		return match[0], nil
	case 0:
		if len(all) == 0 {
			return "", usagef("no flow %q has backups at %s: there are no backups there", flow, s)
		}
		return "", usagef("no flow %q has backups at %s: give a name or uid of %s", flow, s, strings.Join(all, ", "))
	}
	return "", usagef("several flows named %q have backups at %s: give the uid, one of %s", flow, s, strings.Join(match, ", "))
}
