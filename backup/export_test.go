package backup

// SetStageBase turns base staging on or off (for the benchmark that
// measures what it saves) and returns a function that undoes it.
func SetStageBase(on bool) func() {
	old := stageBase
	stageBase = on
	return func() { stageBase = old }
}

// CheckNoPrune is checkNoPrune, for the tests of what a forged prune lock
// can hold up.
var CheckNoPrune = checkNoPrune
