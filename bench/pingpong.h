/* The ping-pong of bench/tls_pair.c for any TLS library: a client and a
 * forked server over one loopback connection, SIZE-byte messages echoed
 * back, ITERATIONS/10+1 rounds to warm up and then ITERATIONS timed ones.
 * A library's program (gnutls_pair.c, nss_pair.c) gives its handshake and
 * its data calls in a `struct tls_library`; the output is tls_pair's JSON
 * line: ssl_calls counts every data call of both processes in the timed
 * rounds, plaintext_bytes what a capture of both sides sees, warm-up
 * included. No OpenSSL header here: NSS names its own functions SSL_*. */
#ifndef CLEARTAP_BENCH_PINGPONG_H
#define CLEARTAP_BENCH_PINGPONG_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct tls_library {
	const char *name;
	/* The TLS session over a connected socket, handshake done; exits on failure. */
	void *(*client)(int fd);
	void *(*server)(int fd, const char *cert, const char *key);
	/* Bytes moved (> 0), or <= 0 on failure. */
	long (*send)(void *session, const char *buf, size_t size);
	long (*recv)(void *session, char *buf, size_t size);
};

static void pingpong_die(const char *library, const char *what)
{
	fprintf(stderr, "%s pair: %s\n", library, what);
	exit(1);
}

static double pingpong_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long *pingpong_calls; /* shared between the two processes */

static void pingpong_read(const struct tls_library *lib, void *s, char *buf, size_t size)
{
	for (size_t got = 0; got < size;) {
		long n = lib->recv(s, buf + got, size - got);
		__atomic_add_fetch(pingpong_calls, 1, __ATOMIC_RELAXED);
		if (n <= 0)
			pingpong_die(lib->name, "read failed");
		got += (size_t)n;
	}
}

static void pingpong_write(const struct tls_library *lib, void *s, const char *buf, size_t size)
{
	for (size_t sent = 0; sent < size;) {
		long n = lib->send(s, buf + sent, size - sent);
		__atomic_add_fetch(pingpong_calls, 1, __ATOMIC_RELAXED);
		if (n <= 0)
			pingpong_die(lib->name, "write failed");
		sent += (size_t)n;
	}
}

static void pingpong_serve(const struct tls_library *lib, int listener, char **argv, size_t size, long rounds)
{
	int fd = accept(listener, NULL, NULL), one = 1;
	if (fd < 0)
		pingpong_die(lib->name, "accept");
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	void *s = lib->server(fd, argv[1], argv[2]);
	char *buf = malloc(size);
	for (long i = 0; i < rounds; i++) {
		pingpong_read(lib, s, buf, size);
		pingpong_write(lib, s, buf, size);
	}
	exit(0);
}

static void pingpong_rounds(const struct tls_library *lib, void *s, const char *msg, char *echo, size_t size,
			    long rounds)
{
	for (long i = 0; i < rounds; i++) {
		pingpong_write(lib, s, msg, size);
		pingpong_read(lib, s, echo, size);
		if (memcmp(msg, echo, size))
			pingpong_die(lib->name, "the echo differs from the message");
	}
}

/* Usage: PROGRAM CERT KEY SIZE ITERATIONS (CERT, KEY: PEM files, or what
 * the library's server() takes for them). */
static int pingpong_main(const struct tls_library *lib, int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s CERT KEY SIZE ITERATIONS\n", argv[0]);
		return 2;
	}
	size_t size = strtoul(argv[3], NULL, 10);
	long iterations = strtol(argv[4], NULL, 10), warmup = iterations / 10 + 1;
	if (size == 0 || iterations <= 0)
		pingpong_die(lib->name, "SIZE and ITERATIONS must be positive");
	pingpong_calls = mmap(NULL, sizeof(long), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(addr);
	int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	if (pingpong_calls == MAP_FAILED || bind(listener, (void *)&addr, len) || listen(listener, 1) ||
	    getsockname(listener, (void *)&addr, &len))
		pingpong_die(lib->name, "listen");
	/* Fork before either side initialises its library (NSS must not be
	 * used across a fork). */
	pid_t server = fork();
	if (server == 0)
		pingpong_serve(lib, listener, argv, size, warmup + iterations);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (void *)&addr, sizeof(addr)))
		pingpong_die(lib->name, "connect");
	void *s = lib->client(fd);
	char *msg = malloc(size), *echo = malloc(size);
	memset(msg, 'x', size);
	pingpong_rounds(lib, s, msg, echo, size, warmup);
	long before = __atomic_load_n(pingpong_calls, __ATOMIC_RELAXED);
	double start = pingpong_now();
	pingpong_rounds(lib, s, msg, echo, size, iterations);
	double seconds = pingpong_now() - start;
	long timed = __atomic_load_n(pingpong_calls, __ATOMIC_RELAXED) - before;
	int status;
	if (waitpid(server, &status, 0) != server || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		pingpong_die(lib->name, "the server failed");
	printf("{\"size\": %zu, \"iterations\": %ld, \"seconds\": %.6f, \"ssl_calls\": %ld, \"bytes\": %zu, "
	       "\"plaintext_bytes\": %zu}\n",
	       size, iterations, seconds, timed, 2 * size * (size_t)iterations, 4 * size * (size_t)(iterations + warmup));
	return 0;
}

#endif
