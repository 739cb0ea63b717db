/* bench/libraries.py's GnuTLS workload: bench/pingpong.h's ping-pong with
 * gnutls_record_send and gnutls_record_recv on both sides (the functions
 * cleartap probes in libgnutls), over the system libgnutls.
 *
 * Usage: gnutls_pair CERT KEY SIZE ITERATIONS   (PEM files) */
#include <gnutls/gnutls.h>

#include "pingpong.h"

static gnutls_session_t handshake(gnutls_session_t s, gnutls_certificate_credentials_t cred, int fd)
{
	int ret;
	if (gnutls_set_default_priority(s) < 0 || gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, cred) < 0)
		pingpong_die("gnutls", "session settings");
	gnutls_transport_set_int(s, fd);
	do {
		ret = gnutls_handshake(s);
	} while (ret < 0 && !gnutls_error_is_fatal(ret));
	if (ret < 0) {
		fprintf(stderr, "gnutls pair: handshake: %s\n", gnutls_strerror(ret));
		exit(1);
	}
	return s;
}

static void *client(int fd)
{
	gnutls_certificate_credentials_t cred;
	gnutls_session_t s;
	/* No verification: the peer is our own forked server. */
	if (gnutls_certificate_allocate_credentials(&cred) < 0 || gnutls_init(&s, GNUTLS_CLIENT) < 0)
		pingpong_die("gnutls", "client session");
	return handshake(s, cred, fd);
}

static void *server(int fd, const char *cert, const char *key)
{
	gnutls_certificate_credentials_t cred;
	gnutls_session_t s;
	if (gnutls_certificate_allocate_credentials(&cred) < 0 ||
	    gnutls_certificate_set_x509_key_file(cred, cert, key, GNUTLS_X509_FMT_PEM) < 0 ||
	    gnutls_init(&s, GNUTLS_SERVER) < 0)
		pingpong_die("gnutls", "server session (certificate or key)");
	return handshake(s, cred, fd);
}

static long send_record(void *s, const char *buf, size_t size)
{
	return gnutls_record_send(s, buf, size);
}

static long recv_record(void *s, char *buf, size_t size)
{
	return gnutls_record_recv(s, buf, size);
}

int main(int argc, char **argv)
{
	static const struct tls_library gnutls = { "gnutls", client, server, send_record, recv_record };
	return pingpong_main(&gnutls, argc, argv);
}
