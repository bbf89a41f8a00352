package testutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TLSFiles are PEM files a test generated: a private CA, a server
// certificate for 127.0.0.1 and a client certificate it signed, and a
// second CA that signed neither.
type TLSFiles struct {
	CA, ServerCert, ServerKey, ClientCert, ClientKey, OtherCA string
}

// NeedTLS skips the test where redis-server was built without TLS.
func NeedTLS(t testing.TB) {
	t.Helper()
	bin := NeedProgram(t, "redis-server")
	out, _ := exec.Command(bin, "--tls-port", "1", "--port", "0").CombinedOutput()
	if strings.Contains(string(out), "Bad directive") {
		t.Skip("redis-server was built without TLS")
	}
}

// GenTLS writes a CA, a server and a client certificate into a temp dir.
func GenTLS(t testing.TB) TLSFiles {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	serial := int64(1)
	cert := func(tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, []byte, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return c, key, der, kder
	}
	ca := func(name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		c, k, der, _ := cert(&x509.Certificate{Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}, nil, nil)
		return c, k, der
	}
	caCert, caKey, caDER := ca("rollout test CA")
	_, _, otherDER := ca("some other CA")
	_, _, sDER, sKey := cert(&x509.Certificate{Subject: pkix.Name{CommonName: "redis"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames: []string{"localhost"}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, caCert, caKey)
	_, _, cDER, cKey := cert(&x509.Certificate{Subject: pkix.Name{CommonName: "rollout worker"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, caCert, caKey)
	return TLSFiles{
		CA: write("ca.pem", "CERTIFICATE", caDER), OtherCA: write("other-ca.pem", "CERTIFICATE", otherDER),
		ServerCert: write("server.pem", "CERTIFICATE", sDER), ServerKey: write("server-key.pem", "EC PRIVATE KEY", sKey),
		ClientCert: write("client.pem", "CERTIFICATE", cDER), ClientKey: write("client-key.pem", "EC PRIVATE KEY", cKey),
	}
}

// ClientConfig is a TLS client configuration that trusts f's CA and
// presents its client certificate.
func (f TLSFiles) ClientConfig() *tls.Config {
	pool := x509.NewCertPool()
	if ca, err := os.ReadFile(f.CA); err == nil {
		pool.AppendCertsFromPEM(ca)
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if c, err := tls.LoadX509KeyPair(f.ClientCert, f.ClientKey); err == nil {
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg
}
