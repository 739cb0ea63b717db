/* Benchmark workload: one TLS connection over loopback, linked against the
 * system libssl; the client sends TOTAL bytes as fast as it can in
 * WRITE-byte SSL_write calls, the server reads them with SSL_read_ex and
 * hashes them. Prints one JSON line: bytes, seconds, MiB/s, and the
 * SHA-256 of what was sent (equal to what the server received, checked).
 *
 * Usage: tls_stream CERT KEY TOTAL WRITE */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static void hex(const unsigned char *d, unsigned n, char *out)
{
	for (unsigned i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", d[i]);
}

/* The server: reads everything, writes back the hex SHA-256 (64 bytes). */
static void serve(int listener, const char *cert, const char *key, size_t total)
{
	SSL *ssl = accept_tls(listener, cert, key);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	static char buf[1 << 16];
	for (size_t got = 0; got < total;) {
		size_t n = 0;
		if (!SSL_read_ex(ssl, buf, sizeof(buf), &n))
			die("read");
		EVP_DigestUpdate(md, buf, n);
		got += n;
	}
	unsigned char digest[32];
	char text[65];
	EVP_DigestFinal_ex(md, digest, NULL);
	hex(digest, 32, text);
	size_t written = 0;
	if (!SSL_write_ex(ssl, text, 64, &written))
		die("write digest");
	SSL_shutdown(ssl);
	exit(0);
}

int main(int argc, char **argv)
{
	program = argv[0];
	if (argc != 5) {
		fprintf(stderr, "usage: tls_stream CERT KEY TOTAL WRITE\n");
		return 2;
	}
	size_t total = strtoull(argv[3], NULL, 10), chunk = strtoull(argv[4], NULL, 10);
	struct sockaddr_in addr;
	int listener = listen_loopback(&addr);
	pid_t server = fork();
	if (server == 0)
		serve(listener, argv[1], argv[2], total);

	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(fd, (void *)&addr, sizeof(addr)))
		die("connect");
	SSL *ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	if (SSL_connect(ssl) != 1)
		die("connect TLS");
	/* Zeroed: bench/scenarios.py rebuilds what was sent from this pattern. */
	unsigned char *buf = calloc(1, chunk);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	double start = now();
	for (size_t sent = 0, i = 0; sent < total; i++) {
		size_t n = total - sent < chunk ? total - sent : chunk;
		for (size_t j = 0; j < n; j += 64)
			buf[j] = (unsigned char)(i + j / 64); /* every write different */
		EVP_DigestUpdate(md, buf, n);
		if (SSL_write(ssl, buf, (int)n) != (int)n)
			die("write");
		sent += n;
	}
	char theirs[65] = { 0 };
	size_t got = 0;
	while (got < 64) {
		size_t n = 0;
		if (!SSL_read_ex(ssl, theirs + got, 64 - got, &n))
			die("read digest");
		got += n;
	}
	double seconds = now() - start;
	unsigned char digest[32];
	char ours[65];
	EVP_DigestFinal_ex(md, digest, NULL);
	hex(digest, 32, ours);
	if (strcmp(ours, theirs) != 0)
		die("the server received other bytes than were sent");
	waitpid(server, NULL, 0);
	printf("{\"bytes\": %zu, \"seconds\": %.6f, \"mib_s\": %.1f, \"sha256\": \"%s\"}\n", total, seconds,
	       total / seconds / (1 << 20), ours);
	return 0;
}
