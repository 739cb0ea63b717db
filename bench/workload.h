/* Shared by the benchmark workloads: errors, the clock, a loopback
 * listener, and the two ends of one TLS connection over it. */
#ifndef CLEARTAP_BENCH_WORKLOAD_H
#define CLEARTAP_BENCH_WORKLOAD_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

static const char *program = "workload";

static void die(const char *what)
{
	fprintf(stderr, "%s: %s\n", program, what);
	ERR_print_errors_fp(stderr);
	exit(1);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A listening socket on 127.0.0.1 and an ephemeral port, written to addr. */
static int listen_loopback(struct sockaddr_in *addr)
{
	int listener = socket(AF_INET, SOCK_STREAM, 0);
	*addr = (struct sockaddr_in){ .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(*addr);
	if (bind(listener, (void *)addr, sizeof(*addr)) || listen(listener, 1) ||
	    getsockname(listener, (void *)addr, &len))
		die("listen");
	return listener;
}

/* The server end: accepts one connection and completes the handshake. */
static SSL *accept_tls(int listener, const char *cert, const char *key)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx || SSL_CTX_use_certificate_file(ctx, cert, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
		die("server context");
	int fd = accept(listener, NULL, NULL);
	SSL *ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	if (SSL_accept(ssl) != 1)
		die("accept");
	return ssl;
}

#endif
