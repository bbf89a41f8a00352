package redisconn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"syscall"
)

// tlsFiles is what the tls_ parameters of a URL name, loaded.
type tlsFiles struct {
	roots *x509.CertPool    // tls_ca: trust this CA instead of the system's
	certs []tls.Certificate // tls_cert + tls_key: present this client certificate
}

// tlsParams takes the TLS parameters out of a Redis URL (go-redis refuses
// parameters it does not know) and loads their files:
//
//	tls_ca=FILE                 PEM CA certificate(s) the server's certificate must chain to
//	tls_cert=FILE&tls_key=FILE  PEM client certificate and its key (both or neither)
//
// Decision: URL parameters rather than flags, so that REDIS_URL alone
// (one Kubernetes secret or environment variable) configures every command
// and the worker the same way; the files are paths, not secrets in the URL.
// They need rediss://: a CA file with a plain-text URL would silently not be
// used.
func tlsParams(raw string) (string, tlsFiles, error) {
	var tf tlsFiles
	u, err := url.Parse(raw)
	if err != nil {
		return raw, tf, err
	}
	q := u.Query()
	ca, cert, key := q.Get("tls_ca"), q.Get("tls_cert"), q.Get("tls_key")
	if ca == "" && cert == "" && key == "" {
		return raw, tf, nil
	}
	if u.Scheme != "rediss" {
		return raw, tf, errors.New("tls_ca, tls_cert and tls_key need rediss:// (TLS)")
	}
	q.Del("tls_ca")
	q.Del("tls_cert")
	q.Del("tls_key")
	u.RawQuery = q.Encode()
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return raw, tf, fmt.Errorf("tls_ca: %w", err)
		}
		tf.roots = x509.NewCertPool()
		if !tf.roots.AppendCertsFromPEM(pem) {
			return raw, tf, fmt.Errorf("tls_ca %s: no PEM certificate in it", ca)
		}
	}
	if (cert == "") != (key == "") {
		return raw, tf, errors.New("tls_cert and tls_key go together: give both or neither")
	}
	if cert != "" {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return raw, tf, fmt.Errorf("tls_cert/tls_key: %w", err)
		}
		tf.certs = []tls.Certificate{c}
	}
	return u.String(), tf, nil
}

// apply puts the files into the TLS config go-redis made for rediss://.
func (tf tlsFiles) apply(c *tls.Config) {
	if tf.roots != nil {
		c.RootCAs = tf.roots
	}
	if tf.certs != nil {
		c.Certificates = tf.certs
	}
	if c.MinVersion == 0 {
		c.MinVersion = tls.VersionTLS12
	}
}

// tlsTrouble words a TLS failure of the first connection for the
// operator: what went wrong and which parameter to look at. tlsOn says the
// URL is rediss://; a server that wants a client certificate and got none
// answers with an alert, or (TLS 1.3, the handshake done on the client's
// side) just resets the connection.
func (tf tlsFiles) trouble(err error, tlsOn bool) (string, bool) {
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	var remote *net.OpError // the server's TLS alert ("remote error: tls: ...")
	var record tls.RecordHeaderError
	switch {
	case errors.As(err, &unknown):
		return "certificate signed by unknown authority (check tls_ca in REDIS_URL)", true
	case errors.As(err, &host):
		return host.Error() + " (connect by a name the certificate holds)", true
	case errors.As(err, &invalid):
		return invalid.Error() + " (check tls_ca in REDIS_URL)", true
	case errors.As(err, &remote) && remote.Op == "remote error":
		return "the server refused the connection: " + remote.Err.Error() + " (check tls_cert and tls_key in REDIS_URL)", true
	case errors.As(err, &record):
		return "the server does not speak TLS (use redis://, or its TLS port)", true
	case tlsOn && tf.certs == nil && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF)):
		return "the server closed the connection: " + err.Error() + " (does it want a client certificate? check tls_cert and tls_key in REDIS_URL)", true
	}
	return "", false
}
