/*
 * keylog_peer HOST PORT PATH KEYLOG_FILE TLS_MAX
 *
 * A TLS client for the end-to-end tests, written against the OpenSSL API so
 * that it builds with both OpenSSL 1.1.1 and 3.x: it fetches PATH over HTTPS
 * (certificate verification off, highest protocol version TLS_MAX, "1.2" or
 * "1.3"), appends OpenSSL's own key log lines to KEYLOG_FILE and writes the
 * response to stdout. Exits 0 on success; on any error prints a message on
 * stderr and exits 1 (2 for bad arguments).
 */
#define _POSIX_C_SOURCE 200112L
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "connect_tcp.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

static const char *keylog_path;
static int keylog_failed;

static void fail(const char *what)
{
    fprintf(stderr, "keylog_peer: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static void keylog(const SSL *ssl, const char *line)
{
    FILE *f = fopen(keylog_path, "a");

    (void)ssl;
    if (f == NULL || fprintf(f, "%s\n", line) < 0)
        keylog_failed = 1;
    if (f != NULL && fclose(f) != 0)
        keylog_failed = 1;
}

int main(int argc, char **argv)
{
    SSL_CTX *ctx;
    SSL *ssl;
    char request[1024], buf[16384];
    int fd, len, n, max_version;

    if (argc != 6) {
        fprintf(stderr, "usage: keylog_peer HOST PORT PATH KEYLOG_FILE TLS_MAX\n");
        return 2;
    }
    if (strcmp(argv[5], "1.2") == 0)
        max_version = TLS1_2_VERSION;
    else if (strcmp(argv[5], "1.3") == 0)
        max_version = TLS1_3_VERSION;
    else {
        fprintf(stderr, "keylog_peer: TLS_MAX must be 1.2 or 1.3\n");
        return 2;
    }
    keylog_path = argv[4];
    len = snprintf(request, sizeof(request),
                   "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", argv[3]);
    if (len < 0 || (size_t)len >= sizeof(request)) {
        fprintf(stderr, "keylog_peer: PATH too long\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN); /* a closed peer is an error, not a silent death */

    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        fail("SSL_CTX_new");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    if (!SSL_CTX_set_max_proto_version(ctx, max_version))
        fail("SSL_CTX_set_max_proto_version");
    SSL_CTX_set_keylog_callback(ctx, keylog);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF /* 3.x: a close without close_notify ends the read */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif

    fd = connect_tcp("keylog_peer", argv[1], argv[2]);
    ssl = SSL_new(ctx);
    if (ssl == NULL || !SSL_set_fd(ssl, fd))
        fail("SSL_new");
    if (SSL_connect(ssl) != 1)
        fail("SSL_connect");
    if (SSL_write(ssl, request, len) != len)
        fail("SSL_write");

    for (;;) {
        n = SSL_read(ssl, buf, sizeof(buf));
        if (n > 0) {
            if (fwrite(buf, 1, (size_t)n, stdout) != (size_t)n)
                fail("writing to stdout");
            continue;
        }
        switch (SSL_get_error(ssl, n)) {
        case SSL_ERROR_ZERO_RETURN: /* close_notify (or EOF in 3.x) */
            break;
        case SSL_ERROR_SYSCALL: /* 1.1.1: EOF without close_notify */
            if (n == 0 && ERR_peek_error() == 0)
                break;
            /* fall through */
        default:
            fail("SSL_read");
        }
        break;
    }
    if (fflush(stdout) != 0)
        fail("writing to stdout");
    if (keylog_failed) {
        fprintf(stderr, "keylog_peer: cannot write %s\n", keylog_path);
        return 1;
    }
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    return 0;
}
