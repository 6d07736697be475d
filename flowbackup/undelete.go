package flowbackup

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/internal/human"
)

type undeleteOptions struct {
	From string
	JSON bool
	storageOptions
}

// undeletePrefixes are where backups lock objects (backup --object-lock).
var undeletePrefixes = []string{backup.ChunksPrefix, backup.ManifestsPrefix, backup.LineagesPrefix}

func newUndeleteCommand() *cobra.Command {
	var o undeleteOptions
	cmd := &cobra.Command{
		Use:   "undelete --from URL",
		Short: "Make locked backups that a DELETE or an overwrite hid current again (S3 Object Lock)",
		Long: `After an attempted wipe of an object-locked location, make every object a
backup locked (chunks, manifests, lineage registry events) current again.

In an S3 bucket with Object Lock (which is always versioned) a plain DELETE
succeeds on a locked object: it cannot remove the locked version, but stacks
a delete marker on it, and a GET (so a restore) no longer finds it; a PUT
stacks a newer version on it. For each such object still under its lock,
undelete deletes the delete markers over it, or copies it (with its lock)
over the newer versions: the oldest locked version is the one the backup
wrote, as every object there is written once. Objects whose lock has ended
are left as they are (what prune deleted stays deleted). Then restore, or
verify --deep, as usual.

On GCS a retained object can be neither deleted nor replaced, so there is
nothing to undo; file:// cannot lock files.

Run it under an identity allowed to list versions and delete delete markers
(s3:ListBucketVersions, s3:GetObjectVersion, s3:GetObjectRetention,
s3:DeleteObjectVersion, s3:PutObject, s3:PutObjectRetention): the
Terraform modules' prune identity, never the agent's. Kopia's equivalent is
connecting to a repository at a point in time; AWS documents deleting a
delete marker as the way to undelete.

` + exitCodesRead,
		Example: "  flowbackup undelete --from s3://my-bucket/flows/wc\n  flowbackup restore --from s3://my-bucket/flows/wc --to /var/lib/flowkeep",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runUndelete(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.From, "from", "", "backup URL")
	f.BoolVar(&o.JSON, "json", false, "print the result as JSON")
	o.storageOptions.addFlags(f)
	return cmd
}

func runUndelete(ctx context.Context, o undeleteOptions, out io.Writer) error {
	s, err := o.open(ctx, o.From)
	if err != nil {
		return err
	}
	defer s.Close()
	r := backup.RetainerOf(s)
	if r == nil {
		return usagef("%s cannot lock objects (file://), so no locked object can be hidden there: nothing to undelete", s)
	}
	total := 0
	byPrefix := map[string]int{}
	for _, p := range undeletePrefixes {
		n, err := r.Undelete(ctx, p, nil)
		total += n
		byPrefix[p] = n
		if err != nil {
			return fmt.Errorf("undelete %s in %s (after making %d objects current again; run it again): %w", p, s, total, err)
		}
		if !o.JSON && n > 0 {
			fmt.Fprintf(out, "%s: made %s current again\n", p, human.Count(n, "locked object"))
		}
	}
	if o.JSON {
		return printJSON(out, map[string]any{"undeleted": total, "by_prefix": byPrefix})
	}
	if total == 0 {
		fmt.Fprintf(out, "nothing hidden: every locked object in %s is current\n", s)
		return nil
	}
	fmt.Fprintf(out, "made %s current again; restore or verify --deep as usual\n", human.Count(total, "locked object"))
	return nil
}
