/*
 * write_ex2_pair CERT KEY REQUEST RESPONSE SERVER_GOT CLIENT_GOT
 *
 * A TLS client and server over loopback, written against OpenSSL 3.3+ for
 * the end-to-end test of SSL_write_ex2. The process listens on an ephemeral
 * port of 127.0.0.1 and forks: the child is the server (CERT, KEY), the
 * parent the client. The client sends the bytes of the file REQUEST with
 * SSL_write_ex2 (every third call through SSL_write_ex), in calls of varied
 * sizes; the server reads exactly that
 * many bytes with SSL_read_ex and writes them to SERVER_GOT, then sends the
 * bytes of RESPONSE the same way and closes; the client reads them with
 * SSL_read_ex up to the close and writes them to CLIENT_GOT. On success the
 * client prints "CLIENT_PID SERVER_PID\n" and exits 0; on any error it
 * prints a message on stderr and exits 1 (2 for bad arguments).
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

static const char *who = "write_ex2_pair";

static void fail(const char *what)
{
    fprintf(stderr, "%s: %s failed\n", who, what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *data = NULL;
    size_t cap = 0, n;

    *len = 0;
    if (f == NULL)
        fail(path);
    for (;;) {
        if (*len == cap) {
            cap = cap ? 2 * cap : 65536;
            data = realloc(data, cap);
            if (data == NULL)
                fail("realloc");
        }
        n = fread(data + *len, 1, cap - *len, f);
        *len += n;
        if (n == 0)
            break;
    }
    if (ferror(f) || fclose(f) != 0)
        fail(path);
    return data;
}

static void write_file(const char *path, const unsigned char *data, size_t len)
{
    FILE *f = fopen(path, "wb");

    if (f == NULL || fwrite(data, 1, len, f) != len || fclose(f) != 0)
        fail(path);
}

/* Sizes of successive SSL_write_ex2 calls: one byte, small ones, a full
 * record, and calls larger than a record (OpenSSL splits those). */
static const size_t call_sizes[] = {1, 7, 300, 16384, 40000, 4096, 100000};

static void send_all(SSL *ssl, const unsigned char *data, size_t len)
{
    size_t off = 0, i = 0, want, written;

    while (off < len) {
        want = call_sizes[i++ % (sizeof(call_sizes) / sizeof(call_sizes[0]))];
        if (want > len - off)
            want = len - off;
        written = 0;
        /* Every third call through SSL_write_ex, which calls SSL_write_ex2. */
        if (i % 3 == 0 ? !SSL_write_ex(ssl, data + off, want, &written)
                       : !SSL_write_ex2(ssl, data + off, want, 0, &written))
            fail("SSL_write_ex2");
        if (written != want)
            fail("a short write");
        off += written;
    }
}

/* Reads up to `len` bytes, or to the peer's close when `to_close`. */
static unsigned char *receive(SSL *ssl, size_t len, int to_close, size_t *got)
{
    size_t cap = len ? len : 65536, n;
    unsigned char *data = malloc(cap);

    *got = 0;
    if (data == NULL)
        fail("malloc");
    while (to_close || *got < len) {
        if (*got == cap) {
            cap *= 2;
            data = realloc(data, cap);
            if (data == NULL)
                fail("realloc");
        }
        n = 0;
        if (SSL_read_ex(ssl, data + *got, cap - *got, &n)) {
            *got += n;
            continue;
        }
        if (to_close && SSL_get_error(ssl, 0) == SSL_ERROR_ZERO_RETURN)
            break;
        fail("SSL_read_ex");
    }
    return data;
}

static void serve(int listener, char **argv, size_t request_len, const unsigned char *response,
                  size_t response_len)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    SSL *ssl;
    unsigned char *got;
    size_t got_len;
    int fd;

    who = "write_ex2_pair server";
    if (ctx == NULL || SSL_CTX_use_certificate_chain_file(ctx, argv[1]) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[2], SSL_FILETYPE_PEM) != 1)
        fail("loading the certificate");
    fd = accept(listener, NULL, NULL);
    if (fd < 0)
        fail("accept");
    ssl = SSL_new(ctx);
    if (ssl == NULL || !SSL_set_fd(ssl, fd))
        fail("SSL_new");
    if (SSL_accept(ssl) != 1)
        fail("SSL_accept");
    got = receive(ssl, request_len, 0, &got_len);
    write_file(argv[5], got, got_len);
    send_all(ssl, response, response_len);
    if (SSL_shutdown(ssl) < 0)
        fail("SSL_shutdown");
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    exit(0);
}

int main(int argc, char **argv)
{
    struct sockaddr_in addr;
    socklen_t addr_len = sizeof(addr);
    unsigned char *request, *response, *got;
    size_t request_len, response_len, got_len;
    SSL_CTX *ctx;
    SSL *ssl;
    int listener, fd, status;
    pid_t server;

    if (argc != 7) {
        fprintf(stderr, "usage: write_ex2_pair CERT KEY REQUEST RESPONSE SERVER_GOT CLIENT_GOT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN); /* a closed peer is an error, not a silent death */
    request = read_file(argv[3], &request_len);
    response = read_file(argv[4], &response_len);

    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        listen(listener, 1) != 0 || getsockname(listener, (struct sockaddr *)&addr, &addr_len) != 0)
        fail("listening on 127.0.0.1");
    fflush(NULL);
    server = fork();
    if (server < 0)
        fail("fork");
    if (server == 0)
        serve(listener, argv, request_len, response, response_len);
    close(listener);

    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        fail("SSL_CTX_new");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0)
        fail("connect");
    ssl = SSL_new(ctx);
    if (ssl == NULL || !SSL_set_fd(ssl, fd))
        fail("SSL_new");
    if (SSL_connect(ssl) != 1)
        fail("SSL_connect");
    send_all(ssl, request, request_len);
    got = receive(ssl, 0, 1, &got_len);
    write_file(argv[6], got, got_len);
    if (waitpid(server, &status, 0) != server || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "write_ex2_pair: the server failed\n");
        return 1;
    }
    printf("%ld %ld\n", (long)getpid(), (long)server);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    return fflush(stdout) == 0 ? 0 : 1;
}
