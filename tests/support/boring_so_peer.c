/*
 * boring_so_peer server CERT KEY TRUTHDIR
 * boring_so_peer client PORT COUNT SIZE TRUTHDIR tls12|tls13
 *
 * tests/boring/boringpeer's exchange and records (tests/support/peer_echo.rs)
 * in C, for a BoringSSL that is a shared library (Debian's
 * android-libboringssl): the program calls libssl.so's SSL_write and
 * SSL_read itself. The server prints "port N" and serves one connection
 * after another: a request (headers, then Content-Length bytes) answered
 * with its body reversed. The client makes COUNT connections in turn, each
 * a POST of SIZE bytes whose answer it checks, and prints "ok COUNT".
 *
 * Both sides append what they passed to SSL_write and got from SSL_read to
 * TRUTHDIR/<local port>-<remote port>.sent and .recv, and every line their
 * key log callback (SSL_CTX_set_keylog_callback) is given to
 * TRUTHDIR/keylog. Any error prints a message on stderr and exits 1.
 */
#define _POSIX_C_SOURCE 200112L
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "connect_tcp.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

/* What one process may take before it is a hang, not a slow machine. */
#define TIMEOUT_SECONDS 120
#define MAX_HEAD 4096

static char truth_dir[2048];

static void fail(const char *what)
{
    fprintf(stderr, "boring_so_peer: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static FILE *open_truth(const char *name, const char *mode)
{
    char path[4096];
    FILE *f;

    if (snprintf(path, sizeof(path), "%s/%s", truth_dir, name) >= (int)sizeof(path))
        fail("TRUTHDIR too long:");
    f = fopen(path, mode);
    if (f == NULL)
        fail(path);
    return f;
}

static void keylog(const SSL *ssl, const char *line)
{
    FILE *f = open_truth("keylog", "a");

    (void)ssl;
    if (fprintf(f, "%s\n", line) < 0 || fclose(f) != 0)
        fail("writing the key log");
}

/* One TLS connection and the files recording its plaintext. */
struct conn {
    SSL *ssl;
    FILE *sent, *recv;
};

static unsigned short port_of(const struct sockaddr_storage *a)
{
    if (a->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
    return ntohs(((const struct sockaddr_in *)a)->sin_port);
}

static void record_to(struct conn *c, int fd)
{
    struct sockaddr_storage local, remote;
    socklen_t l = sizeof(local), r = sizeof(remote);
    char name[64];

    if (getsockname(fd, (struct sockaddr *)&local, &l) != 0 ||
        getpeername(fd, (struct sockaddr *)&remote, &r) != 0)
        fail("getsockname/getpeername");
    snprintf(name, sizeof(name), "%u-%u.sent", port_of(&local), port_of(&remote));
    c->sent = open_truth(name, "w");
    snprintf(name, sizeof(name), "%u-%u.recv", port_of(&local), port_of(&remote));
    c->recv = open_truth(name, "w");
}

static void write_all(struct conn *c, const unsigned char *buf, size_t len)
{
    while (len > 0) {
        int chunk = len > 1 << 20 ? 1 << 20 : (int)len;
        int n = SSL_write(c->ssl, buf, chunk);

        if (n <= 0)
            fail("SSL_write");
        if (fwrite(buf, 1, (size_t)n, c->sent) != (size_t)n)
            fail("recording what was sent");
        buf += n;
        len -= (size_t)n;
    }
}

static void read_exact(struct conn *c, unsigned char *buf, size_t len)
{
    while (len > 0) {
        int chunk = len > 16384 ? 16384 : (int)len;
        int n = SSL_read(c->ssl, buf, chunk);

        if (n <= 0)
            fail("SSL_read (the connection closed early)");
        if (fwrite(buf, 1, (size_t)n, c->recv) != (size_t)n)
            fail("recording what was received");
        buf += n;
        len -= (size_t)n;
    }
}

/* One message: headers (read a byte at a time, as peer_echo.rs does), then
 * Content-Length bytes of body, returned in a new buffer. */
static unsigned char *read_message(struct conn *c, char *head, size_t *body_len)
{
    size_t used = 0;
    unsigned char *body;
    const char *field;

    while (used < 4 || memcmp(head + used - 4, "\r\n\r\n", 4) != 0) {
        if (used == MAX_HEAD - 1)
            fail("reading headers (too long)");
        read_exact(c, (unsigned char *)head + used, 1);
        used++;
    }
    head[used] = '\0';
    field = strstr(head, "Content-Length: ");
    *body_len = field == NULL ? 0 : strtoul(field + strlen("Content-Length: "), NULL, 10);
    body = malloc(*body_len + 1);
    if (body == NULL)
        fail("malloc");
    read_exact(c, body, *body_len);
    return body;
}

static void close_conn(struct conn *c, int fd)
{
    SSL_shutdown(c->ssl);
    SSL_free(c->ssl);
    if (fclose(c->sent) != 0 || fclose(c->recv) != 0)
        fail("closing the records");
    close(fd);
}

static void server(const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    struct sockaddr_in addr;
    socklen_t len = sizeof(addr);
    int listener;

    if (ctx == NULL || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        fail("loading the certificate");
    SSL_CTX_set_keylog_callback(ctx, keylog);
    listener = socket(AF_INET, SOCK_STREAM, 0);
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        listen(listener, 16) != 0 || getsockname(listener, (struct sockaddr *)&addr, &len) != 0)
        fail("listening");
    printf("port %u\n", ntohs(addr.sin_port));
    fflush(stdout);
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        struct conn c;
        char head[MAX_HEAD];
        unsigned char *body;
        size_t n, i;

        if (fd < 0)
            fail("accept");
        c.ssl = SSL_new(ctx);
        if (c.ssl == NULL || !SSL_set_fd(c.ssl, fd))
            fail("SSL_new");
        if (SSL_accept(c.ssl) != 1) {
            /* A client that gave up is its test's failure, not the server's. */
            SSL_free(c.ssl);
            close(fd);
            continue;
        }
        record_to(&c, fd);
        body = read_message(&c, head, &n);
        for (i = 0; i < n / 2; i++) {
            unsigned char t = body[i];
            body[i] = body[n - 1 - i];
            body[n - 1 - i] = t;
        }
        snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", n);
        write_all(&c, (unsigned char *)head, strlen(head));
        write_all(&c, body, n);
        free(body);
        close_conn(&c, fd);
    }
}

/* peer_echo.rs's body(): bytes that differ per connection. */
static unsigned char body_byte(size_t i, size_t seed)
{
    return (unsigned char)((i * 7 + seed * 13) % 251);
}

static void client(const char *port, size_t count, size_t size, int version)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    unsigned char *sent = malloc(size + 1);
    size_t k, i;

    if (ctx == NULL || sent == NULL)
        fail("SSL_CTX_new");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    if (!SSL_CTX_set_min_proto_version(ctx, version) || !SSL_CTX_set_max_proto_version(ctx, version))
        fail("setting the protocol version");
    SSL_CTX_set_keylog_callback(ctx, keylog);
    for (k = 0; k < count; k++) {
        int fd = connect_tcp("boring_so_peer", "127.0.0.1", port);
        struct conn c;
        char head[MAX_HEAD];
        unsigned char *got;
        size_t n;

        c.ssl = SSL_new(ctx);
        if (c.ssl == NULL || !SSL_set_fd(c.ssl, fd) || SSL_connect(c.ssl) != 1)
            fail("SSL_connect");
        record_to(&c, fd);
        for (i = 0; i < size; i++)
            sent[i] = body_byte(i, k);
        snprintf(head, sizeof(head),
                 "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: %zu\r\n\r\n", size);
        write_all(&c, (unsigned char *)head, strlen(head));
        write_all(&c, sent, size);
        got = read_message(&c, head, &n);
        if (strncmp(head, "HTTP/1.1 200 OK\r\n", 17) != 0 || n != size)
            fail("the answer's head");
        for (i = 0; i < size; i++)
            if (got[i] != sent[size - 1 - i])
                fail("the answer (not the request reversed)");
        free(got);
        close_conn(&c, fd);
    }
    printf("ok %zu\n", count);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN); /* a closed peer is an error, not a silent death */
    if (argc == 5 && strcmp(argv[1], "server") == 0) {
        snprintf(truth_dir, sizeof(truth_dir), "%s", argv[4]);
        server(argv[2], argv[3]);
    } else if (argc == 7 && strcmp(argv[1], "client") == 0) {
        int version = strcmp(argv[6], "tls12") == 0   ? TLS1_2_VERSION
                      : strcmp(argv[6], "tls13") == 0 ? TLS1_3_VERSION
                                                      : 0;
        if (version == 0) {
            fprintf(stderr, "boring_so_peer: the version is tls12 or tls13\n");
            return 2;
        }
        snprintf(truth_dir, sizeof(truth_dir), "%s", argv[5]);
        alarm(TIMEOUT_SECONDS); /* the server lives as long as its test */
        client(argv[2], strtoul(argv[3], NULL, 10), strtoul(argv[4], NULL, 10), version);
    } else {
        fprintf(stderr, "usage: boring_so_peer server CERT KEY TRUTHDIR | "
                        "client PORT COUNT SIZE TRUTHDIR tls12|tls13\n");
        return 2;
    }
    return 0;
}
