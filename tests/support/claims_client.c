/*
 * claims_client HOST PORT REQUEST_FILE [ex]
 *
 * A TLS client whose every byte the test owns, built by tests/e2e_claims.rs
 * statically (OpenSSL linked into the executable), dynamically, and inside a
 * container root. It reads REQUEST_FILE, prints "waiting" on stdout and
 * waits for a line on stdin (so the test can make sure cleartap is attached
 * first), then connects to HOST:PORT (certificate verification off), sends
 * the whole request in one SSL_write, and SSL_reads until the server closes,
 * copying the response to stdout. It prints "fd N" on stderr, N being the
 * socket's descriptor. With "ex" it calls SSL_write_ex and SSL_read_ex
 * instead. Exits 0 on success; on any error prints a message on stderr and
 * exits 1 (2 for bad arguments).
 *
 * Built with -DCLAIMS_KEYLOG, it also prints OpenSSL's version on stderr
 * first (which links the "OpenSSL x.y.z" string in, as any program showing
 * its version does) and appends its own key log lines to $SSLKEYLOGFILE.
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

static void fail(const char *what)
{
    fprintf(stderr, "claims_client: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

#ifdef CLAIMS_KEYLOG
static const char *keylog_path;

static void keylog(const SSL *ssl, const char *line)
{
    FILE *f = fopen(keylog_path, "a");

    (void)ssl;
    if (f == NULL || fprintf(f, "%s\n", line) < 0 || fclose(f) != 0)
        fail("writing the key log");
}
#endif

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n;

    if (f == NULL)
        fail("opening the request file");
    *len = 0;
    for (;;) {
        if (*len == cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap);
            if (buf == NULL)
                fail("realloc");
        }
        n = fread(buf + *len, 1, cap - *len, f);
        if (n == 0)
            break;
        *len += n;
    }
    if (ferror(f))
        fail("reading the request file");
    fclose(f);
    return buf;
}

int main(int argc, char **argv)
{
    SSL_CTX *ctx;
    SSL *ssl;
    char *request, buf[65536], line[16];
    size_t request_len, done;
    int fd, n, ex;

    ex = argc == 5 && strcmp(argv[4], "ex") == 0;
    if (argc != 4 && !ex) {
        fprintf(stderr, "usage: claims_client HOST PORT REQUEST_FILE [ex]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    request = read_file(argv[3], &request_len);
    if (request_len == 0 || request_len > 0x7fffffff)
        fail("the request's size");

    printf("waiting\n");
    fflush(stdout);
    if (fgets(line, sizeof(line), stdin) == NULL)
        fail("reading the go-ahead on stdin");

    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        fail("SSL_CTX_new");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
#ifdef CLAIMS_KEYLOG
    fprintf(stderr, "%s\n", OpenSSL_version(OPENSSL_VERSION));
    keylog_path = getenv("SSLKEYLOGFILE");
    if (keylog_path != NULL)
        SSL_CTX_set_keylog_callback(ctx, keylog);
#endif
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    /* The test server closes without a close_notify. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
    fd = connect_tcp("claims_client", argv[1], argv[2]);
    /* The descriptor cleartap must name, for the test to compare. */
    fprintf(stderr, "fd %d\n", fd);
    ssl = SSL_new(ctx);
    if (ssl == NULL || SSL_set_fd(ssl, fd) != 1)
        fail("SSL_new");
    if (SSL_connect(ssl) != 1)
        fail("SSL_connect");
    /* Not SSL_MODE_ENABLE_PARTIAL_WRITE: one call writes everything. */
    if (ex) {
        if (SSL_write_ex(ssl, request, request_len, &done) != 1 || done != request_len)
            fail("SSL_write_ex");
        while (SSL_read_ex(ssl, buf, sizeof(buf), &done) == 1) {
            if (fwrite(buf, 1, done, stdout) != done)
                fail("writing the response");
        }
        n = 0;
    } else {
        if (SSL_write(ssl, request, (int)request_len) != (int)request_len)
            fail("SSL_write");
        while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0) {
            if (fwrite(buf, 1, (size_t)n, stdout) != (size_t)n)
                fail("writing the response");
        }
    }
    if (SSL_get_error(ssl, n) != SSL_ERROR_ZERO_RETURN && SSL_get_error(ssl, n) != SSL_ERROR_SYSCALL)
        fail("SSL_read");
    if (fflush(stdout) != 0)
        fail("writing the response");
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    free(request);
    return 0;
}
