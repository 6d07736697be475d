package flowbackup

import (
	"github.com/spf13/pflag"

	"github.com/flowkeep/flowkeep/backup"

	"filippo.io/age"
)

// Encryption flags, named as age names them.

func addRecipientsFlag(f *pflag.FlagSet, p *[]string) {
	f.StringSliceVar(p, "recipients-file", nil, "encrypt backups with age to the public keys in FILE (one per line, as age -R reads them; repeatable). "+
		"Only public keys are needed here; a location is either encrypted or not, never both")
}

func addIdentityFlag(f *pflag.FlagSet, p *[]string) {
	f.StringSliceVar(p, "identity-file", nil, "open encrypted backups with the age identities (private keys) in FILE (as age -i reads them; repeatable: each is tried)")
}

// loadRecipients reads --recipients-file (nil without one).
func loadRecipients(paths []string) ([]age.Recipient, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	rs, err := backup.LoadRecipients(paths...)
	if err != nil {
		return nil, usageError{err}
	}
	return rs, nil
}

// loadKeys reads --identity-file (nil without one).
func loadKeys(paths []string) (*backup.Cipher, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	ids, err := backup.LoadIdentities(paths...)
	if err != nil {
		return nil, usageError{err}
	}
	return backup.NewOpener(ids), nil
}
