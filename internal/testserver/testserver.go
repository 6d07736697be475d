// Package testserver starts the real servers flowkeep's tests run against on
// 127.0.0.1: versitygw (S3, POSIX backend) and fake-gcs-server (GCS). The
// binaries come from PATH (test.sh installs them). When a binary is missing,
// tests skip, unless FLOWKEEP_REQUIRE_SERVERS is set (as test.sh and CI do),
// in which case they fail.
package testserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/flowkeep/flowkeep/internal/freeport"
)

// Credentials of the versitygw root user the harness starts.
const (
	S3AccessKey = "AKIAFLOWKEEPTEST"
	S3SecretKey = "flowkeep-test-secret-key"
	S3Region    = "us-east-1"
)

// Server is a started server process.
type Server struct {
	Addr string // host:port
	cmd  *exec.Cmd
	dir  string
	log  string
}

// Stop kills the server and removes its data.
func (s *Server) Stop() {
	if s == nil || s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	s.cmd.Wait()
	os.RemoveAll(s.dir)
}

// Required reports whether missing servers fail tests instead of skipping them.
func Required() bool { return os.Getenv("FLOWKEEP_REQUIRE_SERVERS") != "" }

// Missing handles a missing binary: t.Skip or t.Fatal.
func Missing(t testing.TB, err error) {
	t.Helper()
	if Required() {
		t.Fatalf("%v (FLOWKEEP_REQUIRE_SERVERS is set; run ./test.sh to install the servers)", err)
	}
	t.Skipf("%v (run ./test.sh to install the servers)", err)
}

func freePort() (int, error) {
	addrs, err := freeport.Addrs(1)
	if err != nil {
		return 0, err
	}
	_, port, _ := strings.Cut(addrs[0], ":")
	return strconv.Atoi(port)
}

func start(name string, args func(addr, dir string) []string, ready func(addr string) bool) (*Server, error) {
	bin, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("%s not found in PATH", name)
	}
	dir, err := os.MkdirTemp("", "flowkeep-"+name)
	if err != nil {
		return nil, err
	}
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		data := filepath.Join(dir, "data")
		os.MkdirAll(data, 0o755)
		logPath := filepath.Join(dir, "server.log")
		logf, err := os.Create(logPath)
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(bin, args(addr, data)...)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = dieWithParent()
		if err := cmd.Start(); err != nil {
			logf.Close()
			return nil, err
		}
		logf.Close()
		s := &Server{Addr: addr, cmd: cmd, dir: dir, log: logPath}
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if ready(addr) {
				return s, nil
			}
			time.Sleep(50 * time.Millisecond)
		}
		cmd.Process.Kill()
		cmd.Wait()
	}
	b, _ := os.ReadFile(filepath.Join(dir, "server.log"))
	return nil, fmt.Errorf("%s did not start: %s", name, b)
}

func httpReady(url string) func(string) bool {
	return func(string) bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	}
}

// StartVersity starts versitygw with a POSIX backend.
func StartVersity() (*Server, error) {
	return start("versitygw", func(addr, dir string) []string {
		return []string{"--port", addr, "--access", S3AccessKey, "--secret", S3SecretKey, "--region", S3Region, "posix", dir}
	}, func(addr string) bool { return httpReady("http://" + addr + "/")(addr) })
}

// StartVersityVersioned starts versitygw with a POSIX backend that keeps
// object versions (--versioning-dir), which buckets with Object Lock need
// (CreateS3LockBucket).
func StartVersityVersioned() (*Server, error) {
	return start("versitygw", func(addr, dir string) []string {
		versions := filepath.Join(filepath.Dir(dir), "versions")
		os.MkdirAll(versions, 0o755)
		return []string{"--port", addr, "--access", S3AccessKey, "--secret", S3SecretKey, "--region", S3Region, "posix", "--versioning-dir", versions, dir}
	}, func(addr string) bool { return httpReady("http://" + addr + "/")(addr) })
}

// StartFakeGCS starts fake-gcs-server over plain HTTP.
func StartFakeGCS() (*Server, error) {
	return start("fake-gcs-server", func(addr, dir string) []string {
		_, port, _ := strings.Cut(addr, ":")
		return []string{"-scheme", "http", "-host", "127.0.0.1", "-port", port, "-backend", "filesystem",
			"-filesystem-root", dir, "-public-host", addr, "-log-level", "error"}
	}, func(addr string) bool { return httpReady("http://" + addr + "/storage/v1/b?project=test")(addr) })
}

// S3Env returns the environment that points the AWS SDK at s.
func (s *Server) S3Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + S3AccessKey, "AWS_SECRET_ACCESS_KEY=" + S3SecretKey, "AWS_REGION=" + S3Region,
		"AWS_EC2_METADATA_DISABLED=true"}
}

// S3Endpoint is the server's URL.
func (s *Server) S3Endpoint() string { return "http://" + s.Addr }

// SetS3Env points this process's AWS SDK at s.
func (s *Server) SetS3Env() {
	for _, kv := range s.S3Env() {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
}

// SetGCSEnv points this process's GCS client at s.
func (s *Server) SetGCSEnv() { os.Setenv("STORAGE_EMULATOR_HOST", s.Addr) }

// NewName returns a fresh bucket name.
func NewName(prefix string) string {
	var b [4]byte
	rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// CreateS3Bucket creates a bucket on the S3 server s.
func (s *Server) CreateS3Bucket(ctx context.Context, name string) error {
	c, err := s.S3Client(ctx)
	if err != nil {
		return err
	}
	_, err = c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)})
	return err
}

// CreateS3LockBucket creates a bucket with Object Lock enabled (and so
// versioning) on the S3 server s (StartVersityVersioned).
func (s *Server) CreateS3LockBucket(ctx context.Context, name string) error {
	c, err := s.S3Client(ctx)
	if err != nil {
		return err
	}
	_, err = c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name), ObjectLockEnabledForBucket: aws.Bool(true)})
	return err
}

// S3Client is an SDK client of the S3 server s as its root user (tests use
// it to do what flowkeep does not: raw deletes, version listings).
func (s *Server) S3Client(ctx context.Context) (*s3.Client, error) {
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(S3Region),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(S3AccessKey, S3SecretKey, "")))
	if err != nil {
		return nil, err
	}
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(s.S3Endpoint())
		o.UsePathStyle = true
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	}), nil
}

// CreateGCSBucket creates a bucket on the GCS emulator s.
func (s *Server) CreateGCSBucket(ctx context.Context, name string) error {
	body := strings.NewReader(`{"name":"` + name + `"}`)
	resp, err := http.Post("http://"+s.Addr+"/storage/v1/b?project=test", "application/json", body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("create bucket %s: %s", name, resp.Status)
	}
	return nil
}
