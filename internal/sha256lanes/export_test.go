package sha256lanes

// setSHANI turns the SHA-NI code on or off (where it exists) and returns
// the old setting.
func setSHANI(on bool) bool {
	old := useSHANI
	useSHANI = on && hasSHANI()
	return old
}
