// Package integration holds flowkeep's disaster-recovery drills: end-to-end
// tests shaped like a user's incidents, against real servers on 127.0.0.1
// (versitygw for S3, fake-gcs-server for GCS) and the built flowrun and
// flowbackup binaries as child processes, killed with SIGKILL.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/flowkeep/flowkeep/backup"
	"github.com/flowkeep/flowkeep/backup/gcs"
	"github.com/flowkeep/flowkeep/backup/s3"
	"github.com/flowkeep/flowkeep/internal/testserver"
)

var (
	binDir                string
	flowrunBin, backupBin string
	s3srv, gcssrv         *testserver.Server
	s3err, gcserr         error
)

func TestMain(m *testing.M) {
	var err error
	binDir, err = os.MkdirTemp("", "flowkeep-integration")
	if err != nil {
		panic(err)
	}
	flowrunBin, backupBin = filepath.Join(binDir, "flowrun"), filepath.Join(binDir, "flowbackup")
	for bin, pkg := range map[string]string{flowrunBin: "../cmd/flowrun", backupBin: "../cmd/flowbackup"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			panic(fmt.Sprintf("build %s: %v\n%s", pkg, err, out))
		}
	}
	s3srv, s3err = testserver.StartVersity()
	gcssrv, gcserr = testserver.StartFakeGCS()
	code := m.Run()
	s3srv.Stop()
	gcssrv.Stop()
	os.RemoveAll(binDir)
	os.Exit(code)
}

// ageKeys writes an age identity file and its recipients file into dir.
func ageKeys(dir, name string) (recipients, identity string) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		panic(err)
	}
	recipients, identity = filepath.Join(dir, name+".pub"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(recipients, []byte("# "+name+"\n"+id.Recipient().String()+"\n"), 0o644); err != nil {
		panic(err)
	}
	if err := os.WriteFile(identity, []byte(id.String()+"\n"), 0o600); err != nil {
		panic(err)
	}
	return recipients, identity
}

// sealed is b with every flowbackup command encrypting (backup, agent) and
// opening (restore, verify) with age keys, given as FLOWBACKUP_* variables.
func sealed(b backend) backend {
	e := b
	e.recipients, e.identity = ageKeys(binDir, fmt.Sprintf("%s-%d", b.name, time.Now().UnixNano()))
	e.name, e.plain = b.name+"+age", b.env
	e.env = func(addr string) []string {
		return append(b.env(addr), "FLOWBACKUP_RECIPIENTS_FILE="+e.recipients, "FLOWBACKUP_IDENTITY_FILE="+e.identity)
	}
	return e
}

// signed is b with every flowbackup command signing (backup, agent,
// prune) with a new Ed25519 key and trusting its public key (restore,
// verify, list, prune), as FLOWBACKUP_* variables.
func signed(b backend) backend {
	e := b
	key := filepath.Join(binDir, fmt.Sprintf("%s-%d.key", strings.ReplaceAll(b.name, "+", "-"), time.Now().UnixNano()))
	if out, err := exec.Command(backupBin, "keygen", "--out", key).CombinedOutput(); err != nil {
		panic(fmt.Sprintf("keygen: %v\n%s", err, out))
	}
	keys := []string{"FLOWBACKUP_SIGNING_KEY=" + key, "FLOWBACKUP_TRUSTED_KEYS=" + key + ".pub"}
	e.name = b.name + "+signed"
	e.env = func(addr string) []string { return append(b.env(addr), keys...) }
	if b.plain != nil {
		e.plain = func(addr string) []string { return append(b.plain(addr), keys...) }
	}
	return e
}

// backend is an object store the tools are pointed at.
type backend struct {
	name string
	// env points child processes (and in-process clients) at the server,
	// or at addr when a proxy sits in between.
	env func(addr string) []string
	// newURL makes a bucket and returns a fresh URL in it.
	newURL func(t *testing.T) string
	addr   string
	// signsHost: requests are signed over the Host header (a proxy keeps it).
	signsHost bool
	// open returns an in-process client for url (to damage objects).
	open func(t *testing.T, url string) backup.Store
	// recipients and identity, if set, are the age key files the tools
	// run with (see sealed); plain is env without them.
	recipients, identity string
	plain                func(addr string) []string
}

func backends(t *testing.T) []backend {
	t.Helper()
	if s3err != nil || gcserr != nil {
		testserver.Missing(t, errors.Join(s3err, gcserr))
	}
	ctx := context.Background()
	s3b := backend{
		name: "s3", addr: s3srv.Addr, signsHost: true,
		env: func(addr string) []string {
			return append(s3srv.S3Env(), "FLOWKEEP_S3_ENDPOINT=http://"+addr, "FLOWKEEP_S3_PATH_STYLE=true")
		},
		newURL: func(t *testing.T) string {
			name := testserver.NewName("drill")
			if err := s3srv.CreateS3Bucket(ctx, name); err != nil {
				t.Fatal(err)
			}
			return "s3://" + name + "/flows/wc"
		},
	}
	s3b.open = func(t *testing.T, url string) backup.Store {
		bucket, prefix := splitURL(url)
		s3srv.SetS3Env()
		st, err := s3.New(ctx, bucket, prefix, s3.Options{Endpoint: s3srv.S3Endpoint(), PathStyle: true, Region: testserver.S3Region})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	gcsb := backend{
		name: "gcs", addr: gcssrv.Addr,
		env: func(addr string) []string { return []string{"STORAGE_EMULATOR_HOST=" + addr} },
		newURL: func(t *testing.T) string {
			name := testserver.NewName("drill")
			if err := gcssrv.CreateGCSBucket(ctx, name); err != nil {
				t.Fatal(err)
			}
			return "gs://" + name + "/flows/wc"
		},
	}
	gcsb.open = func(t *testing.T, url string) backup.Store {
		bucket, prefix := splitURL(url)
		gcssrv.SetGCSEnv()
		st, err := gcs.New(ctx, bucket, prefix, gcs.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	// Every drill runs once in the clear and once encrypted and signed, on
	// each server.
	return []backend{s3b, gcsb, signed(sealed(s3b)), signed(sealed(gcsb))}
}

func splitURL(url string) (string, string) {
	rest := url[strings.Index(url, "://")+3:]
	bucket, prefix, _ := strings.Cut(rest, "/")
	return bucket, prefix
}

// result is what a finished child process did.
type result struct {
	out  string
	code int
}

func runCmd(t *testing.T, env []string, bin string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return result{out.String(), ee.ExitCode()}
	}
	if err != nil {
		t.Fatal(err)
	}
	return result{out.String(), 0}
}

func mustCmd(t *testing.T, env []string, bin string, args ...string) string {
	t.Helper()
	r := runCmd(t, env, bin, args...)
	if r.code != 0 {
		t.Fatalf("%s %s: exit %d\n%s", filepath.Base(bin), strings.Join(args, " "), r.code, r.out)
	}
	return r.out
}

// proc is a running child process.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{} // closed when the process has exited
	err  error
}

func startCmd(t *testing.T, env []string, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.kill() })
	return p
}

// kill sends SIGKILL and waits; it reports whether the process was running.
func (p *proc) kill() bool {
	select {
	case <-p.done:
		return false
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	return true
}

type syncBuffer struct {
	mu  chan struct{}
	buf bytes.Buffer
}

func (b *syncBuffer) lock() {
	if b.mu == nil {
		b.mu = make(chan struct{}, 1)
	}
	b.mu <- struct{}{}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.lock()
	defer func() { <-b.mu }()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.lock()
	defer func() { <-b.mu }()
	return b.buf.String()
}

// word spells i with letters (wordcount splits on anything else).
func word(i int) string {
	b := []byte{byte('a' + i%26)}
	for i /= 26; i > 0; i /= 26 {
		b = append(b, byte('a'+i%26))
	}
	return string(b)
}

// appendWords appends `lines` lines of 8 words drawn from `vocab` words.
func appendWords(t *testing.T, path string, lines, vocab int, seed int64) {
	appendWordsFrom(t, path, lines, 0, vocab, seed)
}

// appendWordsFrom draws the words from word(base) .. word(base+vocab-1).
func appendWordsFrom(t *testing.T, path string, lines, base, vocab int, seed int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	r := rand.New(rand.NewSource(seed))
	for i := 0; i < lines; i++ {
		for j := 0; j < 8; j++ {
			if j > 0 {
				w.WriteByte(' ')
			}
			w.WriteString(word(base + r.Intn(vocab)))
		}
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func initRec(t *testing.T, dir string, n int) {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	mustCmd(t, nil, flowrunBin, "recovery", "init", dir, fmt.Sprint(n))
}

// drillLog prints a drill's outcome the way the issue asks: what it lost
// (must be nothing) and its wall time.
func drillLog(t *testing.T, began time.Time, lost string) {
	t.Helper()
	t.Logf("%s: lost %s; wall time %v", t.Name(), lost, time.Since(began).Round(10*time.Millisecond))
}

// faultProxy sits between the tools and a server. While on, it gives a
// share of requests (rate) a fault: an answer of 500 or 503, a dropped
// connection, a slow response, a response body cut short, or a body with a
// byte flipped (as a bad NIC or middlebox would). A script, if set, gives
// the requests it picks one exact fault, on or off.
type faultProxy struct {
	addr    string
	on      atomic.Bool
	script  atomic.Pointer[func(*http.Request) scriptedFault]
	srv     *http.Server
	rp      *httputil.ReverseProxy
	mu      sync.Mutex
	rnd     *rand.Rand
	rate    float64
	hits    atomic.Int64
	flipped atomic.Int64
}

// newFaultProxy proxies to target. keepHost keeps the client's Host header
// (S3 signs it); otherwise the target's own is sent (fake-gcs-server routes
// on it).
func newFaultProxy(t *testing.T, target string, keepHost bool) *faultProxy {
	t.Helper()
	u, _ := neturl.Parse("http://" + target)
	p := &faultProxy{rnd: rand.New(rand.NewSource(time.Now().UnixNano())), rate: 0.6}
	p.rp = &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		// SetURL sends the target's Host, which servers that route on it
		// (fake-gcs-server's public host) need; S3 signs the client's.
		r.SetURL(u)
		if keepHost {
			r.Out.Host = r.In.Host
		}
	}}
	p.rp.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.srv = &http.Server{Handler: p, ErrorLog: log.New(io.Discard, "", 0)}
	go p.srv.Serve(ln)
	t.Cleanup(func() { p.srv.Close() })
	return p
}

// scriptedFault is the fault a script gives one request.
type scriptedFault struct {
	// lose forwards the request, then answers 500: the server acted, and
	// its answer was lost on the way back.
	lose bool
	// flip, if flipAt >= 0, flips a bit of the response body's byte flipAt.
	flip   bool
	flipAt int
}

// setScript makes fn choose the faults of the requests it picks (the zero
// scriptedFault: none); nil ends the script.
func (p *faultProxy) setScript(fn func(*http.Request) scriptedFault) {
	if fn == nil {
		p.script.Store(nil)
		return
	}
	p.script.Store(&fn)
}

// faultFor turns faults on for d.
func (p *faultProxy) faultFor(d time.Duration) {
	p.on.Store(true)
	time.AfterFunc(d, func() { p.on.Store(false) })
}

type cutWriter struct {
	http.ResponseWriter
	left int
}

func (c *cutWriter) Write(b []byte) (int, error) {
	if len(b) > c.left {
		c.ResponseWriter.Write(b[:c.left])
		panic(http.ErrAbortHandler) // the server drops the connection mid-body
	}
	c.left -= len(b)
	return c.ResponseWriter.Write(b)
}

// flipWriter flips one bit of the body byte at offset at (or of the last
// byte, for a shorter body: see Flush).
type flipWriter struct {
	http.ResponseWriter
	at   int
	done bool
}

func (f *flipWriter) Write(b []byte) (int, error) {
	if !f.done && f.at < len(b) {
		c := append([]byte(nil), b...)
		c[f.at] ^= 0x04
		f.done = true
		return f.ResponseWriter.Write(c)
	}
	f.at -= len(b)
	return f.ResponseWriter.Write(b)
}

func (p *faultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if fn := p.script.Load(); fn != nil {
		switch f := (*fn)(r); {
		case f.lose:
			p.hits.Add(1)
			p.rp.ServeHTTP(httptest.NewRecorder(), r)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		case f.flip:
			p.hits.Add(1)
			fw := &flipWriter{ResponseWriter: w, at: f.flipAt}
			p.rp.ServeHTTP(fw, r)
			if fw.done {
				p.flipped.Add(1)
			}
			return
		}
	}
	if !p.on.Load() {
		p.rp.ServeHTTP(w, r)
		return
	}
	p.mu.Lock()
	x := p.rnd.Float64()
	kind := p.rnd.Intn(6)
	at := p.rnd.Intn(200)
	p.mu.Unlock()
	if x >= p.rate {
		p.rp.ServeHTTP(w, r)
		return
	}
	p.hits.Add(1)
	switch {
	case kind == 0:
		http.Error(w, "slow down", http.StatusServiceUnavailable)
	case kind == 1:
		http.Error(w, "internal error", http.StatusInternalServerError)
	case kind == 2:
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close()
				return
			}
		}
		panic(http.ErrAbortHandler)
	case kind == 3:
		time.Sleep(400 * time.Millisecond)
		p.rp.ServeHTTP(w, r)
	case kind == 4 && r.Method == http.MethodGet:
		p.rp.ServeHTTP(&cutWriter{ResponseWriter: w, left: 100}, r)
	case kind == 5 && r.Method == http.MethodGet:
		fw := &flipWriter{ResponseWriter: w, at: at}
		p.rp.ServeHTTP(fw, r)
		if fw.done {
			p.flipped.Add(1)
		}
	default:
		p.rp.ServeHTTP(w, r)
	}
}

// sameWordcountOutput reports how a wordcount output file differs in what it
// says from want's (an uninterrupted run over the same input), or "".
// Lines are written as they come, so with several workers their order
// within a pass varies: the two must hold the same lines, each as often
// (exactly once), and read from the top, taking each word's last line, the
// same totals.
func sameWordcountOutput(got, want []byte) string {
	lines := func(b []byte) []string {
		return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	}
	g, w := lines(got), lines(want)
	if len(g) != len(w) {
		return fmt.Sprintf("%d lines, want %d", len(g), len(w))
	}
	totals := func(ls []string) map[string]string {
		m := map[string]string{}
		for _, l := range ls {
			word, n, _ := strings.Cut(l, ",")
			m[word] = n
		}
		return m
	}
	gt, wt := totals(g), totals(w)
	for word, n := range wt {
		if gt[word] != n {
			return fmt.Sprintf("word %q totals %q, want %q", word, gt[word], n)
		}
	}
	if len(gt) != len(wt) {
		return fmt.Sprintf("%d words, want %d", len(gt), len(wt))
	}
	gs, ws := slices.Clone(g), slices.Clone(w)
	slices.Sort(gs)
	slices.Sort(ws)
	for i := range gs {
		if gs[i] != ws[i] {
			return fmt.Sprintf("line %q where the uninterrupted run has %q (sorted, line %d)", gs[i], ws[i], i)
		}
	}
	return ""
}
