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

// addCheckRecipientsFlag is --recipients-file for readers: the keys that
// tell an encrypted location's genuine plaintext indexes from forged ones.
func addCheckRecipientsFlag(f *pflag.FlagSet, p *[]string) {
	f.StringSliceVar(p, "recipients-file", nil, "in an encrypted location: the age public keys the backups are encrypted to (as for backup; repeatable). "+
		"Tells genuine backups from ones forged by someone who can write to the bucket but holds none of them (an --identity-file does too)")
}

// loadAuth reads --recipients-file and --identity-file for a reader: the
// keys that check encrypted backups' plaintext indexes, and the identities
// that open them (each nil without).
func loadAuth(recipients, identities []string) (*backup.IndexAuth, *backup.Cipher, error) {
	rs, err := loadRecipients(recipients)
	if err != nil {
		return nil, nil, err
	}
	keys, err := loadKeys(identities)
	if err != nil {
		return nil, nil, err
	}
	auth, err := backup.NewIndexAuth(rs, nil)
	if err != nil {
		return nil, nil, usageError{err}
	}
	return auth, keys, nil
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

// Signing flags.

func addSigningKeyFlag(f *pflag.FlagSet, p *string, what string) {
	f.StringVar(p, "signing-key", "", what+" with the Ed25519 signing key in FILE (flowbackup keygen makes one); readers then need its public key (--trusted-keys)")
}

func addTrustedKeysFlag(f *pflag.FlagSet, p *[]string, what string) {
	f.StringSliceVar(p, "trusted-keys", nil, "believe only backups signed by the public keys in FILE (one per line; repeatable; list the old and the new key while rotating)"+what)
}

// loadSigningKey reads --signing-key (nil without one).
func loadSigningKey(path string) (*backup.SigningKey, error) {
	if path == "" {
		return nil, nil
	}
	k, err := backup.LoadSigningKey(path)
	if err != nil {
		return nil, usageError{err}
	}
	return k, nil
}

// loadTrusted reads --trusted-keys (nil without any).
func loadTrusted(paths []string) (*backup.TrustedKeys, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	t, err := backup.LoadTrustedKeys(paths...)
	if err != nil {
		return nil, usageError{err}
	}
	return t, nil
}
