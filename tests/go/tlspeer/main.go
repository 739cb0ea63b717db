// tlspeer: an HTTPS server and client in Go's crypto/tls for cleartap's
// end-to-end tests. Every byte each side passes to (*tls.Conn).Write and
// gets from (*tls.Conn).Read is also written to a ground-truth file per
// connection, named by the local and remote ports; the secrets go to a
// KeyLogWriter file: what cleartap captures is compared with both.
//
//	tlspeer server CERT KEY TRUTHDIR KEYLOG          prints "port N", serves until killed
//	tlspeer client URL COUNT SIZE WORKERS TRUTHDIR KEYLOG
//	tlspeer pingpong CERT KEY SIZE ITERATIONS        bench/libraries.py's workload
//
// The server echoes each POST body after a line giving its length and
// SHA-256; the client checks every response and exits 1 on a mismatch.
// The client prints that line for every request, in request order, then
// "ok COUNT": a deterministic transcript, so a run under capture can be
// compared with a run without it.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// recorded appends what passes through a *tls.Conn to truth files.
type recorded struct {
	*tls.Conn
	sent, received *os.File
}

func record(c *tls.Conn, dir string) (*recorded, error) {
	local := c.LocalAddr().(*net.TCPAddr).Port
	remote := c.RemoteAddr().(*net.TCPAddr).Port
	name := filepath.Join(dir, fmt.Sprintf("%d-%d", local, remote))
	sent, err := os.Create(name + ".sent")
	if err != nil {
		return nil, err
	}
	received, err := os.Create(name + ".recv")
	if err != nil {
		return nil, err
	}
	return &recorded{c, sent, received}, nil
}

func (r *recorded) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	r.received.Write(b[:n])
	return n, err
}

func (r *recorded) Write(b []byte) (int, error) {
	n, err := r.Conn.Write(b)
	r.sent.Write(b[:n])
	return n, err
}

func (r *recorded) Close() error {
	r.sent.Close()
	r.received.Close()
	return r.Conn.Close()
}

type listener struct {
	net.Listener
	config *tls.Config
	dir    string
}

func (l *listener) Accept() (net.Conn, error) {
	raw, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return record(tls.Server(raw, l.config), l.dir)
}

// deep grows the goroutine's stack, so the runtime moves it while a
// request is served: a uretprobe would break exactly here.
func deep(n int) int {
	var pad [64]byte
	pad[n%64] = byte(n)
	if n == 0 {
		return int(pad[0])
	}
	return deep(n-1) + int(pad[n%64])
}

func echo(w http.ResponseWriter, r *http.Request) {
	deep(2000)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	sum := sha256.Sum256(body)
	fmt.Fprintf(w, "%d %s\n", len(body), hex.EncodeToString(sum[:]))
	w.Write(body)
}

func keylog(path string) *os.File {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		fail(err)
	}
	return f
}

func server(args []string) {
	cert, err := tls.LoadX509KeyPair(args[0], args[1])
	if err != nil {
		fail(err)
	}
	config := &tls.Config{Certificates: []tls.Certificate{cert}, KeyLogWriter: keylog(args[3])}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	fmt.Printf("port %d\n", raw.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	fail(http.Serve(&listener{raw, config, args[2]}, http.HandlerFunc(echo)))
}

func body(i, size int) []byte {
	b := make([]byte, size)
	for j := range b {
		b[j] = byte('a' + (i+j)%26)
	}
	return b
}

func client(args []string) {
	url := args[0]
	count, _ := strconv.Atoi(args[1])
	size, _ := strconv.Atoi(args[2])
	workers, _ := strconv.Atoi(args[3])
	dir, keys := args[4], keylog(args[5])
	config := &tls.Config{InsecureSkipVerify: true, KeyLogWriter: keys}
	transport := &http.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&tls.Dialer{Config: config}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return record(c.(*tls.Conn), dir)
		},
		MaxIdleConnsPerHost: workers,
	}
	httpc := &http.Client{Transport: transport}
	jobs := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	bad := 0
	transcript := make([]string, count)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				line, err := exchange(httpc, url, body(i, size))
				transcript[i] = line
				if err != nil {
					mu.Lock()
					bad++
					mu.Unlock()
					fmt.Fprintln(os.Stderr, "request", i, err)
				}
			}
		}()
	}
	for i := 0; i < count; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	transport.CloseIdleConnections()
	if bad > 0 {
		fail(fmt.Errorf("%d of %d responses wrong", bad, count))
	}
	for i, line := range transcript {
		fmt.Printf("%d %s\n", i, line)
	}
	fmt.Printf("ok %d\n", count)
}

// exchange POSTs one body and returns the status and the response's first
// line.
func exchange(c *http.Client, url string, sent []byte) (string, error) {
	resp, err := c.Post(url, "application/octet-stream", bytes.NewReader(sent))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	line, _, _ := bytes.Cut(got, []byte("\n"))
	summary := fmt.Sprintf("%d %s", resp.StatusCode, line)
	sum := sha256.Sum256(sent)
	want := append([]byte(fmt.Sprintf("%d %s\n", len(sent), hex.EncodeToString(sum[:]))), sent...)
	if !bytes.Equal(got, want) {
		return summary, fmt.Errorf("response differs (%d bytes, want %d)", len(got), len(want))
	}
	return summary, nil
}

// pingpong: a client and a server goroutine in this process over one
// loopback connection, ping-ponging SIZE-byte messages (the server echoes
// each back); after ITERATIONS/10+1 warm-up rounds, ITERATIONS timed ones.
// Prints one JSON line as bench/tls_pair.c does: calls counts every
// (*tls.Conn).Read and Write of both sides in the timed rounds,
// plaintext_bytes what a capture of both sides sees, warm-up included.
func pingpong(args []string) {
	cert, err := tls.LoadX509KeyPair(args[0], args[1])
	if err != nil {
		fail(err)
	}
	size, _ := strconv.Atoi(args[2])
	iterations, _ := strconv.Atoi(args[3])
	warmup := iterations/10 + 1
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	var calls atomic.Int64
	go func() {
		conn, err := raw.Accept()
		if err != nil {
			fail(err)
		}
		server := tls.Server(conn, &tls.Config{Certificates: []tls.Certificate{cert}})
		echoRounds(server, size, warmup+iterations, &calls)
	}()
	c, err := tls.Dial("tcp", raw.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		fail(err)
	}
	msg := body(0, size)
	clientRounds(c, msg, warmup, &calls)
	before := calls.Load()
	start := time.Now()
	clientRounds(c, msg, iterations, &calls)
	seconds := time.Since(start).Seconds()
	timed := calls.Load() - before
	c.Close()
	fmt.Printf("{\"size\": %d, \"iterations\": %d, \"seconds\": %.6f, \"ssl_calls\": %d, "+
		"\"plaintext_bytes\": %d}\n", size, iterations, seconds, timed, 4*size*(iterations+warmup))
}

// readFull is io.ReadFull, counting each Read.
func readFull(c *tls.Conn, buf []byte, calls *atomic.Int64) {
	for got := 0; got < len(buf); {
		n, err := c.Read(buf[got:])
		calls.Add(1)
		if err != nil {
			fail(err)
		}
		got += n
	}
}

func writeAll(c *tls.Conn, buf []byte, calls *atomic.Int64) {
	_, err := c.Write(buf)
	calls.Add(1)
	if err != nil {
		fail(err)
	}
}

func echoRounds(c *tls.Conn, size, rounds int, calls *atomic.Int64) {
	buf := make([]byte, size)
	for i := 0; i < rounds; i++ {
		readFull(c, buf, calls)
		writeAll(c, buf, calls)
	}
}

func clientRounds(c *tls.Conn, msg []byte, rounds int, calls *atomic.Int64) {
	buf := make([]byte, len(msg))
	for i := 0; i < rounds; i++ {
		writeAll(c, msg, calls)
		readFull(c, buf, calls)
		if !bytes.Equal(buf, msg) {
			fail(fmt.Errorf("round %d: the echo differs", i))
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "tlspeer:", err)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: tlspeer server|client ..."))
	}
	switch os.Args[1] {
	case "server":
		server(os.Args[2:])
	case "client":
		client(os.Args[2:])
	case "pingpong":
		pingpong(os.Args[2:])
	default:
		fail(fmt.Errorf("unknown mode %q", os.Args[1]))
	}
}
