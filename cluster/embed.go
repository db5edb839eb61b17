package cluster

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/sfvmm/sfvmm/cluster/pki"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// Embedded is a one-member etcd cluster inside this process: the default
// for a user with one or a few hosts, who then runs nothing else. Users
// with an etcd cluster of their own point every agent at it instead.
type Embedded struct {
	e *embed.Etcd
	// Endpoint is its client URL, for every member's --etcd.
	Endpoint string
}

// EmbeddedPort is the embedded etcd's client port unless told otherwise
// (etcd's own default); its peer port is the next one.
const EmbeddedPort = 2379

// embedStartLimit bounds how long the embedded etcd may take to serve.
const embedStartLimit = 60 * time.Second

// StartEmbedded starts etcd with its data in dir, serving clients on
// ip:port over TLS with id's certificate and accepting only clients with
// a certificate of the cluster's CA.
func StartEmbedded(dir string, ip net.IP, port int, id *pki.Identity) (*Embedded, error) {
	cfg := embed.NewConfig()
	cfg.Name = id.Name
	cfg.Dir = dir
	cfg.LogLevel = "error"
	host := net.JoinHostPort(ip.String(), strconv.Itoa(port))
	peer := net.JoinHostPort(ip.String(), strconv.Itoa(port+1))
	cu := url.URL{Scheme: "https", Host: host}
	pu := url.URL{Scheme: "https", Host: peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	tlsInfo := transport.TLSInfo{CertFile: id.CertFile, KeyFile: id.KeyFile, TrustedCAFile: id.CAFile, ClientCertAuth: true}
	cfg.ClientTLSInfo, cfg.PeerTLSInfo = tlsInfo, tlsInfo
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(embedStartLimit):
		e.Close()
		return nil, fmt.Errorf("embedded etcd: not ready in %v", embedStartLimit)
	}
	return &Embedded{e: e, Endpoint: cu.String()}, nil
}

// Err delivers the embedded etcd's failure, if it fails while running.
func (e *Embedded) Err() <-chan error { return e.e.Err() }

// Close stops it.
func (e *Embedded) Close() { e.e.Close() }
