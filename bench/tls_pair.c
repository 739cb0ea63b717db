/* Benchmark workload: a TLS client and server over loopback, linked against
 * the system libssl, exchanging SIZE-byte messages in a tight loop.
 *
 * The client uses SSL_write/SSL_read, the server SSL_write_ex/SSL_read_ex,
 * so every hooked function runs. One iteration: the client writes SIZE
 * bytes, the server reads them and writes them back, the client reads them.
 * Prints one JSON line: iterations, seconds (timed loop only), ssl_calls
 * (every SSL_* data call of both processes), bytes (plaintext moved),
 * plaintext_bytes (everything a capture of both processes sees).
 *
 * Usage: tls_pair CERT KEY SIZE ITERATIONS */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static long *calls; /* shared between the two processes */

static void read_all(SSL *ssl, char *buf, size_t size, int ex)
{
	size_t got = 0;
	while (got < size) {
		size_t n = 0;
		int ok;
		if (ex) {
			ok = SSL_read_ex(ssl, buf + got, size - got, &n);
		} else {
			int r = SSL_read(ssl, buf + got, (int)(size - got));
			ok = r > 0;
			n = r > 0 ? (size_t)r : 0;
		}
		__atomic_add_fetch(calls, 1, __ATOMIC_RELAXED);
		if (!ok)
			die("read failed");
		got += n;
	}
}

static void write_all(SSL *ssl, const char *buf, size_t size, int ex)
{
	size_t n = 0;
	int ok = ex ? SSL_write_ex(ssl, buf, size, &n) : SSL_write(ssl, buf, (int)size) == (int)size;
	__atomic_add_fetch(calls, 1, __ATOMIC_RELAXED);
	if (!ok)
		die("write failed");
}

static void serve(int listener, const char *cert, const char *key, size_t size, long iterations)
{
	SSL *ssl = accept_tls(listener, cert, key);
	char *buf = malloc(size);
	for (long i = 0; i < iterations; i++) {
		read_all(ssl, buf, size, 1);
		write_all(ssl, buf, size, 1);
	}
	SSL_shutdown(ssl);
	exit(0);
}

int main(int argc, char **argv)
{
	program = argv[0];
	if (argc != 5) {
		fprintf(stderr, "usage: tls_pair CERT KEY SIZE ITERATIONS\n");
		return 2;
	}
	size_t size = strtoul(argv[3], NULL, 10);
	long iterations = strtol(argv[4], NULL, 10);
	calls = mmap(NULL, sizeof(long), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	struct sockaddr_in addr;
	int listener = listen_loopback(&addr);
	long warmup = iterations / 10 + 1;
	pid_t server = fork();
	if (server == 0)
		serve(listener, argv[1], argv[2], size, iterations + warmup);

	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (void *)&addr, sizeof(addr)))
		die("connect");
	SSL *ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	if (SSL_connect(ssl) != 1)
		die("connect TLS");
	char *buf = malloc(size);
	memset(buf, 'x', size);
	for (long i = 0; i < warmup; i++) {
		write_all(ssl, buf, size, 0);
		read_all(ssl, buf, size, 0);
	}
	long calls_before = __atomic_load_n(calls, __ATOMIC_RELAXED);
	double start = now();
	for (long i = 0; i < iterations; i++) {
		write_all(ssl, buf, size, 0);
		read_all(ssl, buf, size, 0);
	}
	double seconds = now() - start;
	/* The server's last read completed before our last read returned. */
	long timed_calls = __atomic_load_n(calls, __ATOMIC_RELAXED) - calls_before;
	SSL_shutdown(ssl);
	waitpid(server, NULL, 0);
	/* Every byte is written by one side and read by the other: what a
	 * capture of both processes sees, warm-up included. */
	size_t plaintext = 4 * size * (size_t)(iterations + warmup);
	printf("{\"size\": %zu, \"iterations\": %ld, \"seconds\": %.6f, \"ssl_calls\": %ld, \"bytes\": %zu, "
	       "\"plaintext_bytes\": %zu}\n",
	       size, iterations, seconds, timed_calls, 2 * size * (size_t)iterations, plaintext);
	return 0;
}
