/* bench/libraries.py's NSS workload: bench/pingpong.h's ping-pong with
 * PR_Write and PR_Read on an NSS SSL socket on both sides (NSPR's
 * functions, where cleartap probes NSS), over the system libnss3/libnspr4.
 *
 * Usage: nss_pair DBDIR NICKNAME SIZE ITERATIONS
 *   DBDIR: an NSS database (sql:) holding the server's certificate and key
 *   under NICKNAME (certutil -N, pk12util -i: bench/libraries.py makes it). */
#include <cert.h>
#include <nspr.h>
#include <nss.h>
#include <pk11pub.h>
#include <prio.h>
#include <private/pprio.h> /* PR_ImportTCPSocket: NSPR over our own socket */
#include <ssl.h>

#include "pingpong.h"

static void fail(const char *what)
{
	fprintf(stderr, "nss pair: %s: NSS error %d\n", what, PR_GetError());
	exit(1);
}

static SECStatus accept_any_certificate(void *arg, PRFileDesc *fd, PRBool check_signature, PRBool is_server)
{
	(void)arg, (void)fd, (void)check_signature, (void)is_server;
	return SECSuccess; /* the peer is our own forked server */
}

/* An SSL socket over the connected `fd`, this side's role set. */
static PRFileDesc *ssl_socket(int fd, PRBool server)
{
	PRFileDesc *tcp = PR_ImportTCPSocket(fd);
	PRFileDesc *ssl = tcp ? SSL_ImportFD(NULL, tcp) : NULL;
	if (!ssl || SSL_OptionSet(ssl, SSL_SECURITY, PR_TRUE) != SECSuccess ||
	    SSL_OptionSet(ssl, server ? SSL_HANDSHAKE_AS_SERVER : SSL_HANDSHAKE_AS_CLIENT, PR_TRUE) != SECSuccess)
		fail("SSL socket");
	return ssl;
}

static void *handshake(PRFileDesc *ssl, PRBool server)
{
	if (SSL_ResetHandshake(ssl, server) != SECSuccess || SSL_ForceHandshake(ssl) != SECSuccess)
		fail("handshake");
	return ssl;
}

static void *client(int fd)
{
	if (NSS_NoDB_Init(NULL) != SECSuccess || NSS_SetDomesticPolicy() != SECSuccess)
		fail("NSS_NoDB_Init");
	PRFileDesc *ssl = ssl_socket(fd, PR_FALSE);
	if (SSL_SetURL(ssl, "localhost") != SECSuccess ||
	    SSL_AuthCertificateHook(ssl, accept_any_certificate, NULL) != SECSuccess)
		fail("client settings");
	return handshake(ssl, PR_FALSE);
}

static void *server(int fd, const char *db, const char *nickname)
{
	if (NSS_Init(db) != SECSuccess || NSS_SetDomesticPolicy() != SECSuccess ||
	    SSL_ConfigServerSessionIDCache(0, 0, 0, NULL) != SECSuccess)
		fail("NSS_Init (the database)");
	CERTCertificate *cert = PK11_FindCertFromNickname(nickname, NULL);
	SECKEYPrivateKey *key = cert ? PK11_FindKeyByAnyCert(cert, NULL) : NULL;
	if (!key)
		fail("the server's certificate or key in the database");
	PRFileDesc *ssl = ssl_socket(fd, PR_TRUE);
	if (SSL_ConfigServerCert(ssl, cert, key, NULL, 0) != SECSuccess)
		fail("SSL_ConfigServerCert");
	return handshake(ssl, PR_TRUE);
}

static long write_plaintext(void *s, const char *buf, size_t size)
{
	return PR_Write(s, buf, (PRInt32)size);
}

static long read_plaintext(void *s, char *buf, size_t size)
{
	return PR_Read(s, buf, (PRInt32)size);
}

int main(int argc, char **argv)
{
	static const struct tls_library nss = { "nss", client, server, write_plaintext, read_plaintext };
	return pingpong_main(&nss, argc, argv);
}
