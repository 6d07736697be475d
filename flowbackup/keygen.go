package flowbackup

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/flowkeep/flowkeep/backup"
)

type keygenOptions struct {
	Out string
}

func newKeygenCommand() *cobra.Command {
	var o keygenOptions
	cmd := &cobra.Command{
		Use:   "keygen --out FILE",
		Short: "Make an Ed25519 signing key for backups (FILE) and its public key (FILE.pub)",
		Long: `Write a new Ed25519 signing key to FILE (mode 0600; never over an existing
file) and its public key to FILE.pub.

Writers (backup, agent) sign every manifest, latest pointer and lineage event
with the signing key (--signing-key FILE); readers (restore, verify, prune,
list) believe only backups signed by the public keys they are given
(--trusted-keys FILE.pub). So whoever can write to the bucket, without the
signing key, cannot choose the state a restore lays down or the backups prune
deletes. Keep the signing key on the machines that back up; give the public
key to everyone who restores. Rotate by listing the old and the new public key
in the trusted-keys file until the old backups are pruned.

Exit codes:
  0  the key pair was written
  3  usage error: no --out, FILE or FILE.pub exists, or cannot be written`,
		Example: "  flowbackup keygen --out /etc/flowkeep/signing.key\n  flowbackup backup -r /var/lib/flowkeep --to s3://b/wc --signing-key /etc/flowkeep/signing.key\n  flowbackup restore --from s3://b/wc --to /var/lib/flowkeep --trusted-keys signing.key.pub",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runKeygen(o, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&o.Out, "out", "", "where to write the signing key (its public key goes to FILE.pub)")
	return cmd
}

func runKeygen(o keygenOptions, out io.Writer) error {
	if o.Out == "" {
		return usagef("--out FILE is required: where to write the signing key")
	}
	for _, p := range []string{o.Out, o.Out + ".pub"} {
		if _, err := os.Lstat(p); err == nil {
			return usagef("%s exists: keygen never overwrites a key; choose another --out", p)
		}
	}
	pub, err := backup.GenerateSigningKey(o.Out)
	if errors.Is(err, os.ErrExist) {
		return usagef("%s exists: keygen never overwrites a key", o.Out)
	}
	if err != nil {
		return usageError{err}
	}
	fmt.Fprintf(out, "signing key: %s (mode 0600: for backup and agent --signing-key)\npublic key:  %s.pub (for restore, verify and prune --trusted-keys)\n%s\n", o.Out, o.Out, pub)
	return nil
}
