// Package bench holds flowkeep's performance benchmarks. Each prints the
// figure its issue names; bench/run.sh runs them all. Ratios are measured in
// one run (the machine is shared and noisy): the compared variants alternate.
package bench
