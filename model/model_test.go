package model

import "testing"

// The hashes are an on-disk contract (snapshots written by one version are
// routed and partitioned by the next): FNV-1a 64, whose published values
// these are, and partitions by that hash over step, a zero byte and key.
func TestHashesAreStable(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint64
	}{{"", 0xcbf29ce484222325}, {"a", 0xaf63dc4c8601ec8c}, {"foobar", 0x85944171f73967e8}} {
		if got := KeyHash(c.in); got != c.want {
			t.Errorf("KeyHash(%q) = %x, want %x", c.in, got, c.want)
		}
	}
	for _, c := range []struct {
		step StepID
		key  StateKey
		n    PartitionCount
	}{{"wordcount.count", "alpha", 4}, {"s", "", 7}, {"", "k", 1}, {"logstats.window", "GET /index.html", 16}} {
		want := PartitionIndex(KeyHash(string(c.step)+"\x00"+string(c.key)) % uint64(c.n))
		if got := PartitionFor(c.step, c.key, c.n); got != want {
			t.Errorf("PartitionFor(%q, %q, %d) = %d, want %d", c.step, c.key, c.n, got, want)
		}
	}
	if WorkerFor("alpha", 3) != WorkerIndex(KeyHash("alpha")%3) {
		t.Error("WorkerFor is not KeyHash mod w")
	}
}
