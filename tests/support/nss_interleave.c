/* Two NSS TLS client connections driven by one thread, their handshakes
 * interleaved the way an event loop (Firefox's socket thread) interleaves
 * them: A's ClientHello, B's ClientHello, A's ServerHello, B's
 * ServerHello, then the rest of A, then the rest of B. A secret of A is
 * then computed after B's ClientHello was hashed on the same thread:
 * tying a secret to "the thread's last ClientHello" gives it B's random.
 *
 * The sockets are non-blocking. A small NSPR layer under NSS's SSL layer
 * hands NSS the server's bytes a record at a time, and only as many
 * records as allowed, so that each step above stops where it should
 * whatever the server's writes put in one segment.
 *
 * Usage: nss_interleave PORT_A PORT_B  (TLS servers on 127.0.0.1)
 * Sends "GET /a HTTP/1.0" and "GET /b ..." once both handshakes are done,
 * prints each answer's first line, exits 0. */
#include <errno.h>
#include <fcntl.h>
#include <nspr.h>
#include <nss.h>
#include <poll.h>
#include <prio.h>
#include <private/pprio.h> /* PR_ImportTCPSocket: NSPR over our own socket */
#include <ssl.h>

#include "connect_tcp.h"

#define RECORD_HEADER 5
#define UNLIMITED -1

struct conn {
	const char *name;
	int fd;
	PRFileDesc *ssl;
	int records_allowed; /* whole records NSS may still read */
	int header_got;      /* bytes of the current record's header read */
	unsigned char header[RECORD_HEADER];
	int body_left;       /* bytes of the current record's body unread */
	int gated;           /* a read stopped at the allowance */
};

static PRDescIdentity gate_identity;

static void fail(const char *who, const char *what)
{
	fprintf(stderr, "nss_interleave: %s: %s: NSS error %d\n", who, what, PR_GetError());
	exit(1);
}

/* Reads from the socket without crossing into a record not yet allowed. */
static PRInt32 gated_recv(PRFileDesc *fd, void *buf, PRInt32 amount, PRIntn flags, PRIntervalTime timeout)
{
	struct conn *c = (struct conn *)fd->secret;
	if (c->header_got == 0 && c->body_left == 0) {
		if (c->records_allowed == 0) {
			c->gated = 1;
			PR_SetError(PR_WOULD_BLOCK_ERROR, 0);
			return -1;
		}
	}
	PRInt32 want = c->header_got < RECORD_HEADER ? RECORD_HEADER - c->header_got : c->body_left;
	if (amount < want)
		want = amount;
	PRInt32 got = fd->lower->methods->recv(fd->lower, buf, want, flags, timeout);
	if (got <= 0)
		return got;
	if (c->header_got < RECORD_HEADER) {
		memcpy(c->header + c->header_got, buf, got);
		c->header_got += got;
		if (c->header_got == RECORD_HEADER) {
			c->body_left = c->header[3] << 8 | c->header[4];
			if (c->records_allowed > 0)
				c->records_allowed--;
		}
	} else {
		c->body_left -= got;
	}
	if (c->header_got == RECORD_HEADER && c->body_left == 0)
		c->header_got = 0;
	return got;
}

static PRInt32 gated_read(PRFileDesc *fd, void *buf, PRInt32 amount)
{
	return gated_recv(fd, buf, amount, 0, PR_INTERVAL_NO_TIMEOUT);
}

static SECStatus accept_any_certificate(void *arg, PRFileDesc *fd, PRBool check_signature, PRBool is_server)
{
	(void)arg, (void)fd, (void)check_signature, (void)is_server;
	return SECSuccess; /* the test's own self-signed server */
}

/* A client SSL socket to 127.0.0.1:port over a non-blocking socket with
 * the record gate between them. */
static void open_conn(struct conn *c, const char *port)
{
	static PRIOMethods gate_methods;
	if (gate_identity == 0) {
		gate_identity = PR_GetUniqueIdentity("nss_interleave gate");
		gate_methods = *PR_GetDefaultIOMethods();
		gate_methods.recv = gated_recv;
		gate_methods.read = gated_read;
	}
	c->fd = connect_tcp("nss_interleave", "127.0.0.1", port);
	if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) != 0) {
		perror("nss_interleave: O_NONBLOCK");
		exit(1);
	}
	PRFileDesc *tcp = PR_ImportTCPSocket(c->fd);
	PRSocketOptionData nonblocking = { .option = PR_SockOpt_Nonblocking, .value.non_blocking = PR_TRUE };
	if (!tcp || PR_SetSocketOption(tcp, &nonblocking) != PR_SUCCESS)
		fail(c->name, "socket");
	PRFileDesc *gate = PR_CreateIOLayerStub(gate_identity, &gate_methods);
	if (!gate)
		fail(c->name, "gate layer");
	gate->secret = (PRFilePrivate *)c;
	if (PR_PushIOLayer(tcp, PR_TOP_IO_LAYER, gate) != PR_SUCCESS)
		fail(c->name, "pushing the gate layer");
	c->ssl = SSL_ImportFD(NULL, tcp);
	if (!c->ssl || SSL_OptionSet(c->ssl, SSL_SECURITY, PR_TRUE) != SECSuccess ||
	    SSL_OptionSet(c->ssl, SSL_HANDSHAKE_AS_CLIENT, PR_TRUE) != SECSuccess ||
	    SSL_SetURL(c->ssl, "localhost") != SECSuccess ||
	    SSL_AuthCertificateHook(c->ssl, accept_any_certificate, NULL) != SECSuccess ||
	    SSL_ResetHandshake(c->ssl, PR_FALSE) != SECSuccess)
		fail(c->name, "SSL socket");
}

static void wait_readable(struct conn *c)
{
	struct pollfd p = { .fd = c->fd, .events = POLLIN };
	int n = poll(&p, 1, 10000);
	if (n != 1) {
		fprintf(stderr, "nss_interleave: %s: nothing from the server in 10 s\n", c->name);
		exit(1);
	}
}

/* Runs c's handshake on until it is done or has used `records` more of
 * the server's records (UNLIMITED: until done). Returns whether done. */
static int step(struct conn *c, int records)
{
	c->records_allowed = records;
	for (;;) {
		c->gated = 0;
		if (SSL_ForceHandshake(c->ssl) == SECSuccess)
			return 1;
		if (PR_GetError() != PR_WOULD_BLOCK_ERROR)
			fail(c->name, "handshake");
		if (c->gated)
			return 0;
		wait_readable(c);
	}
}

/* One HTTP/1.0 request over the finished connection; its first line. */
static void fetch(struct conn *c)
{
	char request[64], answer[4096];
	int len = snprintf(request, sizeof(request), "GET /%s HTTP/1.0\r\n\r\n", c->name);
	PRSocketOptionData blocking = { .option = PR_SockOpt_Nonblocking, .value.non_blocking = PR_FALSE };
	if (PR_SetSocketOption(c->ssl, &blocking) != PR_SUCCESS)
		fail(c->name, "blocking");
	if (PR_Write(c->ssl, request, len) != len)
		fail(c->name, "PR_Write");
	int got = 0, n;
	while (got < (int)sizeof(answer) - 1 && (n = PR_Read(c->ssl, answer + got, sizeof(answer) - 1 - got)) > 0)
		got += n;
	answer[got] = 0;
	answer[strcspn(answer, "\r\n")] = 0;
	printf("%s: %s\n", c->name, answer);
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: nss_interleave PORT_A PORT_B\n");
		return 2;
	}
	if (NSS_NoDB_Init(NULL) != SECSuccess || NSS_SetDomesticPolicy() != SECSuccess)
		fail("main", "NSS_NoDB_Init");
	struct conn a = { .name = "a" }, b = { .name = "b" };
	open_conn(&a, argv[1]);
	open_conn(&b, argv[2]);
	/* Each ClientHello is sent; nothing of the server's is read yet. */
	if (step(&a, 0) || step(&b, 0))
		fail("main", "a handshake done before the server spoke");
	/* Each ServerHello (one record): NSS hashes its buffered ClientHello
	 * and derives the handshake secrets. */
	if (step(&a, 1) || step(&b, 1))
		fail("main", "a handshake done after one record");
	/* A's application secrets, after B's ClientHello was hashed. */
	step(&a, UNLIMITED);
	step(&b, UNLIMITED);
	fetch(&a);
	fetch(&b);
	PR_Close(a.ssl);
	PR_Close(b.ssl);
	/* The session cache holds references that keep NSS busy. */
	SSL_ClearSessionCache();
	if (NSS_Shutdown() != SECSuccess)
		fail("main", "NSS_Shutdown");
	return 0;
}
