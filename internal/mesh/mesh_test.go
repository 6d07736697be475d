package mesh

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowkeep/flowkeep/internal/freeport"
)

// dialAll starts one Dial per config (as the processes of a cluster would)
// and returns each one's mesh or error.
func dialAll(t *testing.T, cfgs []Config) ([]*Mesh, []error) {
	t.Helper()
	ms, errs := make([]*Mesh, len(cfgs)), make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i, c := range cfgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ms[i], errs[i] = Dial(context.Background(), c, "test-run", func(error) {})
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, m := range ms {
			if m != nil {
				wg.Add(1)
				go func() { defer wg.Done(); m.Close(context.Background(), nil) }()
			}
		}
		wg.Wait()
	})
	return ms, errs
}

func configs(t *testing.T, n int, each func(i int, c *Config)) []Config {
	t.Helper()
	addrs, err := freeport.Addrs(n)
	if err != nil {
		t.Fatal(err)
	}
	cfgs := make([]Config, n)
	for i := range cfgs {
		cfgs[i] = Config{Self: i, Addresses: addrs, ConnectTimeout: 3 * time.Second}
		if each != nil {
			each(i, &cfgs[i])
		}
	}
	return cfgs
}

// pingPong checks that every pair of meshes can exchange a message.
func pingPong(t *testing.T, ms []*Mesh) {
	t.Helper()
	got := make(chan string, len(ms))
	for _, m := range ms {
		m.Handle("hi", func(from int, b []byte) error { got <- string(b); return nil })
	}
	for _, m := range ms {
		if err := m.Broadcast(context.Background(), "hi", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < len(ms)*(len(ms)-1); i++ {
		select {
		case <-got:
		case <-time.After(5 * time.Second):
			t.Fatal("a message did not arrive")
		}
	}
}

func TestDial_SharedSecret(t *testing.T) {
	for _, tc := range []struct {
		name    string
		secrets []string
		want    string // "" = the cluster forms
	}{
		{"same secret", []string{"s3cret", "s3cret", "s3cret"}, ""},
		{"no secret anywhere", []string{"", "", ""}, ""},
		{"one differs", []string{"s3cret", "s3cret", "other"}, "the cluster secrets differ"},
		{"one has none", []string{"s3cret", "", "s3cret"}, "cluster secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfgs := configs(t, len(tc.secrets), func(i int, c *Config) { c.Secret = []byte(tc.secrets[i]) })
			ms, errs := dialAll(t, cfgs)
			if tc.want == "" {
				for i, err := range errs {
					if err != nil {
						t.Fatalf("process %d: %v", i, err)
					}
				}
				pingPong(t, ms)
				return
			}
			var all []string
			for _, err := range errs {
				if err != nil {
					all = append(all, err.Error())
				}
			}
			if len(all) == 0 || !strings.Contains(strings.Join(all, "\n"), tc.want) {
				t.Fatalf("errors %q, want one that says %q", all, tc.want)
			}
		})
	}
}

// A stranger that connects first and sends garbage, or an endless frame, or
// nothing, is refused; the real peers still form the cluster.
func TestDial_StrangersAreRefusedAndStartGoesOn(t *testing.T) {
	cfgs := configs(t, 2, func(_ int, c *Config) { c.Secret = []byte("s3cret") })
	var ms []*Mesh
	var errs []error
	done := make(chan struct{})
	go func() {
		ms, errs = dialAll(t, cfgs[1:]) // process 1 waits for process 0
		close(done)
	}()
	var strangers []net.Conn
	for _, junk := range [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		binary.BigEndian.AppendUint32(nil, 1<<30), // announces a huge frame, sends nothing more
		append(binary.BigEndian.AppendUint32(nil, 40), make([]byte, 40)...),
		nil, // connects and says nothing
	} {
		var c net.Conn
		var err error
		for k := 0; k < 50; k++ {
			if c, err = net.Dial("tcp", cfgs[1].Addresses[1]); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		c.Write(junk)
		strangers = append(strangers, c)
	}
	defer func() {
		for _, c := range strangers {
			c.Close()
		}
	}()
	m0, err := Dial(context.Background(), cfgs[0], "test-run", func(error) {})
	if err != nil {
		t.Fatalf("process 0: %v", err)
	}
	<-done
	t.Cleanup(func() { // both at once: each waits for the other's goodbye
		go ms[0].Close(context.Background(), nil)
		m0.Close(context.Background(), nil)
	})
	if errs[0] != nil {
		t.Fatalf("process 1: %v", errs[0])
	}
	pingPong(t, []*Mesh{m0, ms[0]})
}

// A peer that never completes its handshake is named in the error when the
// wait times out.
func TestDial_TimeoutSaysWhoWasRefused(t *testing.T) {
	cfgs := configs(t, 2, func(_ int, c *Config) { c.Secret = []byte("s3cret"); c.ConnectTimeout = time.Second })
	errc := make(chan error, 1)
	go func() {
		_, err := Dial(context.Background(), cfgs[1], "test-run", func(error) {})
		errc <- err
	}()
	// An impostor with the wrong secret dials as process 0.
	imp := cfgs[0]
	imp.Secret = []byte("guess")
	m, err := Dial(context.Background(), imp, "test-run", func(error) {})
	if err == nil {
		m.Close(context.Background(), nil)
		t.Fatal("the impostor joined")
	}
	if !strings.Contains(err.Error(), "the cluster secrets differ") {
		t.Fatalf("impostor's error: %v", err)
	}
	err = <-errc
	if err == nil || !strings.Contains(err.Error(), "did not form") || !strings.Contains(err.Error(), "process 0 ("+cfgs[0].Addresses[0]+")") ||
		!strings.Contains(err.Error(), "the cluster secrets differ") {
		t.Fatalf("process 1's error: %v", err)
	}
}

// testCA makes a CA and, for each name, a certificate it signs for
// 127.0.0.1.
func testCA(t *testing.T, names ...string) (*x509.CertPool, []tls.Certificate) {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	var certs []tls.Certificate
	for i, n := range names {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: n}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k})
	}
	return pool, certs
}

func TestDial_MutualTLS(t *testing.T) {
	pool, certs := testCA(t, "p0", "p1", "p2")
	otherPool, otherCerts := testCA(t, "stranger")
	_ = otherPool
	tlsFor := func(pool *x509.CertPool, cert tls.Certificate) *tls.Config {
		return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	}
	t.Run("same CA", func(t *testing.T) {
		cfgs := configs(t, 3, func(i int, c *Config) { c.TLS = tlsFor(pool, certs[i]); c.Secret = []byte("and a secret") })
		ms, errs := dialAll(t, cfgs)
		for i, err := range errs {
			if err != nil {
				t.Fatalf("process %d: %v", i, err)
			}
		}
		pingPong(t, ms)
	})
	t.Run("a certificate from another CA", func(t *testing.T) {
		cfgs := configs(t, 2, func(i int, c *Config) { c.TLS = tlsFor(pool, certs[i]); c.ConnectTimeout = time.Second })
		cfgs[0].TLS = tlsFor(pool, otherCerts[0]) // trusts the right CA, presents a stranger's certificate
		_, errs := dialAll(t, cfgs)
		if errs[0] == nil || errs[1] == nil {
			t.Fatalf("a peer with a foreign certificate joined: %v", errs)
		}
		if !strings.Contains(errs[1].Error(), "refused a connection") && !strings.Contains(errs[1].Error(), "certificate") {
			t.Fatalf("process 1's error does not say it refused the stranger: %v", errs[1])
		}
	})
}

// FuzzDispatch: no frame a peer sends can crash the process; a bad one is
// an error (which fails the run cleanly).
func FuzzDispatch(f *testing.F) {
	f.Add([]byte{frameTopic, 3, 'a', 'b', 'c', 1, 2})
	f.Add([]byte{frameTopic, 200})
	f.Add(append([]byte{frameTopic, 7}, "$gather"...))
	f.Add(append([]byte{frameTopic, 8}, "$barrier"...))
	f.Add(append([]byte{frameData}, make([]byte, 19)...))
	f.Add([]byte{frameCredit, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3})
	f.Add([]byte{frameAbort, 'x'})
	f.Add([]byte{99})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return // readFrameMax never returns an empty frame
		}
		m := newMesh(0, []string{"a", "b"}, func(error) {})
		defer m.haltHandlers(errHandlersStopped)
		m.Handle("hi", func(int, []byte) error { return nil })
		p := &peer{id: 1}
		wait := func(res <-chan error, _ error) {
			if res != nil {
				<-res
			}
		}
		wait(m.dispatch(p, b, true)) // before the data and credit handlers are set
		m.HandleData(func(int, DataHeader, []byte) error { return nil })
		m.HandleCredit(func(int, uint16, uint32, uint32) error { return nil })
		wait(m.dispatch(p, b, true))
		m.parseHello(b)
	})
}

// While a peer is missing, Waiting hears which one and why; the final
// error names it with its last dial error.
func TestDial_UnreachablePeerIsNamed(t *testing.T) {
	cfgs := configs(t, 2, func(_ int, c *Config) { c.ConnectTimeout = 1200 * time.Millisecond })
	var mu sync.Mutex
	var heard []string
	old := waitReport
	defer func() { waitReport = old }()
	waitReport = 300 * time.Millisecond
	cfgs[0].Waiting = func(s string) { mu.Lock(); heard = append(heard, s); mu.Unlock() }
	_, err := Dial(context.Background(), cfgs[0], "test-run", func(error) {}) // process 1 never starts
	want := "process 1 (" + cfgs[0].Addresses[1] + "): "
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("err = %v, want it to name %q and its dial error", err, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(heard) == 0 || !strings.Contains(heard[0], want) {
		t.Fatalf("while waiting heard %q", heard)
	}
}

// --listen: a process can listen on another address than the one its
// peers dial (NAT, a Kubernetes Service).
func TestDial_ListenAddress(t *testing.T) {
	cfgs := configs(t, 2, nil)
	_, port, _ := net.SplitHostPort(cfgs[0].Addresses[1])
	cfgs[1].Listen = ":" + port // all interfaces, same port
	ms, errs := dialAll(t, cfgs)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("process %d: %v", i, err)
		}
	}
	pingPong(t, ms)
}
