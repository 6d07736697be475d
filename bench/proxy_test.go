package bench

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
)

// requestCounter is an HTTP proxy in front of an S3 server that counts the
// requests that pass, as a bucket's bill would: every request is one,
// whatever its size. Clients pointed at it keep their signatures (the Host
// header is passed on as they signed it).
type requestCounter struct {
	URL string
	mu  sync.Mutex
	by  map[string]int // "GET chunks", "PUT manifests", ...
}

func countRequests(b *testing.B, target string) *requestCounter {
	b.Helper()
	u, err := url.Parse(target)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	c := &requestCounter{URL: "http://" + ln.Addr().String(), by: map[string]int{}}
	proxy := httputil.NewSingleHostReverseProxy(u)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.count(r)
		proxy.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return c
}

// count files a request under its method and the first name of its key
// below the bucket and the tool's prefix (path-style: /bucket/prefix/...).
func (c *requestCounter) count(r *http.Request) {
	parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 4)
	what := "bucket"
	if len(parts) >= 3 {
		what = parts[2]
	}
	if r.URL.Query().Has("list-type") || r.URL.Query().Has("prefix") {
		what = "list"
	}
	c.mu.Lock()
	c.by[r.Method+" "+what]++
	c.mu.Unlock()
}

// take returns the requests counted since the last take, and their total.
func (c *requestCounter) take() (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	var parts []string
	for k, v := range c.by {
		n += v
		parts = append(parts, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(parts)
	c.by = map[string]int{}
	return n, strings.Join(parts, ", ")
}
