// Package sim is an in-memory simulator of the Phala Cloud API endpoints a
// rollout uses. It serves the same paths, shapes and errors as the OpenAPI
// document in ../shared/phala-openapi, over a generated fleet, with faults
// that tests, the demo and the benchmarks inject. Nothing in the product may
// rely on behaviour here that the real API does not have.
package sim

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// FleetOptions shapes a generated fleet. The same options and seed always
// give the same fleet.
type FleetOptions struct {
	CVMs          int
	Seed          uint64
	Nodes         int     // hosts; default max(4, CVMs/50)
	OldVMMShare   float64 // share of nodes below 0.5.7 (default 0.1)
	UnknownVMMShr float64 // share of nodes with a null or garbled version (default 0.02)
	// AtTargetShare of CVMs already hold AtTargetKMS/AtTargetGateway, so a
	// plan has "unchanged" rows (default 0).
	AtTargetShare   float64
	AtTargetKMS     []string
	AtTargetGateway []string
}

// cvm is the simulator's record of one CVM.
type cvm struct {
	id, name, appID, vmUUID, status string
	node                            *node
	kms, gateway                    []string
	ports                           []port
	restartUntil                    time.Time     // stopping, then starting, until then
	restartHalf                     time.Duration // the starting half of a restart
	neverBack                       bool          // a restart leaves it stopped
}

type port struct {
	HostPort    int    `json:"host_port"`
	VMPort      int    `json:"vm_port"`
	Protocol    string `json:"protocol"`
	HostAddress string `json:"host_address"`
}

type node struct {
	id      int
	name    string
	region  string
	version *string
}

var regions = []string{"eu-central", "us-east", "us-west", "ap-southeast"}
var envs = []string{"prod", "staging", "dev"}
var roles = []string{"web", "api", "worker", "db", "kms-client"}

// Versions the API is known or guessed to report (phala-api.md §7).
var goodVersions = []string{"0.5.7", "v0.5.8", "0.5.9", "v0.5.10 (git:9f1c2ab)", "0.5.11", "0.6.0-dev"}
var oldVersions = []string{"0.5.6", "v0.5.5", "0.5.3", "0.5.7-rc1", "0.4.2"}
var unknownVersions = []*string{nil, ptr("unknown"), ptr("")}

func ptr[T any](v T) *T { return &v }

const idAlphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"

func generate(o FleetOptions) []*cvm {
	r := rand.New(rand.NewPCG(o.Seed, o.Seed^0x9e3779b97f4a7c15))
	if o.Nodes <= 0 {
		o.Nodes = max(4, o.CVMs/50)
	}
	if o.OldVMMShare == 0 {
		o.OldVMMShare = 0.1
	}
	if o.UnknownVMMShr == 0 {
		o.UnknownVMMShr = 0.02
	}
	nodes := make([]*node, o.Nodes)
	for i := range nodes {
		n := &node{id: 100 + i, region: regions[i%len(regions)]}
		n.name = fmt.Sprintf("%s%d", envs[i%len(envs)], i+1)
		switch f := r.Float64(); {
		case f < o.UnknownVMMShr:
			n.version = unknownVersions[r.IntN(len(unknownVersions))]
		case f < o.UnknownVMMShr+o.OldVMMShare:
			n.version = ptr(oldVersions[r.IntN(len(oldVersions))])
		default:
			n.version = ptr(goodVersions[r.IntN(len(goodVersions))])
		}
		nodes[i] = n
	}
	seen := map[string]bool{}
	out := make([]*cvm, o.CVMs)
	for i := range out {
		n := nodes[r.IntN(len(nodes))]
		c := &cvm{node: n, status: "running"}
		for c.id == "" || seen[c.id] {
			var b strings.Builder
			b.WriteString("cvm_")
			for range 8 {
				b.WriteByte(idAlphabet[r.IntN(len(idAlphabet))])
			}
			c.id = b.String()
		}
		seen[c.id] = true
		env := strings.TrimRight(n.name, "0123456789")
		c.name = fmt.Sprintf("%s-%s-%04d", env, roles[r.IntN(len(roles))], i+1)
		c.appID = fmt.Sprintf("%040x", r.Uint64())[:40]
		c.vmUUID = fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", r.Uint32(), r.Uint32()&0xffff, r.Uint32()&0xffff, r.Uint32()&0xffff, r.Uint64()&0xffffffffffff)
		if r.Float64() < 0.05 {
			c.status = "stopped"
		}
		c.kms = []string{fmt.Sprintf("https://kms-old.%s.phala.example:8000", n.region)}
		c.gateway = []string{fmt.Sprintf("https://gateway-old.%s.phala.example:8000", n.region)}
		if o.AtTargetShare > 0 && r.Float64() < o.AtTargetShare {
			if o.AtTargetKMS != nil {
				c.kms = append([]string(nil), o.AtTargetKMS...)
			}
			if o.AtTargetGateway != nil {
				c.gateway = append([]string(nil), o.AtTargetGateway...)
			}
		}
		c.ports = []port{{HostPort: 20000 + i%40000, VMPort: 443, Protocol: "tcp", HostAddress: "0.0.0.0"}}
		out[i] = c
	}
	return out
}
