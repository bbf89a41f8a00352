// Package api is the typed client for the parts of the Phala Cloud REST API
// that a network-config rollout needs: listing CVMs, reading one, and reading
// and patching its KMS and Gateway URLs. Shapes follow the OpenAPI document in
// ../shared/phala-openapi (CVMInfo for API version 2026-01-21 and later).
package api

// CVM is the subset of CVMInfo (2026-01-21+) the rollout reads. Unknown
// fields are ignored, so newer API versions keep decoding.
type CVM struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	AppID      *string   `json:"app_id"`
	VMUUID     *string   `json:"vm_uuid,omitempty"`
	InstanceID *string   `json:"instance_id,omitempty"`
	Status     string    `json:"status"`
	InProgress bool      `json:"in_progress"`
	NodeInfo   *NodeInfo `json:"node_info"`
}

// NodeInfo is NodeRef: the host ("teepod") a CVM runs on. Version is the
// VMM version string; its format is not documented, see ParseVersion.
type NodeInfo struct {
	ID      *int    `json:"id"`
	NodeID  *int    `json:"node_id,omitempty"`
	Name    *string `json:"name"`
	Region  *string `json:"region"`
	Status  *string `json:"status,omitempty"`
	Version *string `json:"version"`
}

// NodeName, NodeRegion and VMMVersion read node_info fields that may be
// absent or null anywhere along the way.
func (c *CVM) NodeName() string {
	return deref(c.NodeInfo, func(n *NodeInfo) *string { return n.Name })
}
func (c *CVM) NodeRegion() string {
	return deref(c.NodeInfo, func(n *NodeInfo) *string { return n.Region })
}
func (c *CVM) VMMVersion() string {
	return deref(c.NodeInfo, func(n *NodeInfo) *string { return n.Version })
}

// AppIDValue is app_id, or "" when null.
func (c *CVM) AppIDValue() string {
	if c.AppID == nil {
		return ""
	}
	return *c.AppID
}

func deref(n *NodeInfo, f func(*NodeInfo) *string) string {
	if n == nil {
		return ""
	}
	if p := f(n); p != nil {
		return *p
	}
	return ""
}

// Page is PaginatedCvmInfos.
type Page struct {
	Items    []CVM `json:"items"`
	Total    int   `json:"total"`
	Page     int   `json:"page"`
	PageSize int   `json:"page_size"`
	Pages    int   `json:"pages"`
}

// NetworkConfig is NetworkConfigResponse: the URLs the VMM holds for a CVM.
type NetworkConfig struct {
	KMSURLs     []string      `json:"kms_urls"`
	GatewayURLs []string      `json:"gateway_urls"`
	Ports       []PortMapping `json:"ports,omitempty"`
}

// PortMapping is NetworkConfigPortMappingEntry.
type PortMapping struct {
	HostPort    int    `json:"host_port"`
	VMPort      int    `json:"vm_port"`
	Protocol    string `json:"protocol,omitempty"`
	HostAddress string `json:"host_address,omitempty"`
}

// NetworkConfigUpdate is UpdateNetworkConfigRequest. A nil slice is omitted
// from the body and means "leave unchanged"; a non-nil empty slice is sent as
// [] and resets the list to the node's default. Keep the two apart.
type NetworkConfigUpdate struct {
	KMSURLs     *[]string `json:"kms_urls,omitempty"`
	GatewayURLs *[]string `json:"gateway_urls,omitempty"`
	Restart     bool      `json:"restart"`
}
