package store

import (
	"crypto/sha256"
	"encoding/json"
	"time"
)

// Agent statuses.
const (
	AgentActive  = "active"
	AgentRevoked = "revoked"
)

// Agent is a registered agent. AgentID is "<org>::<name>".
type Agent struct {
	AgentID          string     `json:"agent_id"`
	Name             string     `json:"name"`
	DisplayName      string     `json:"display_name"`
	SPIFFEID         string     `json:"spiffe_id"`
	Status           string     `json:"status"`
	Capabilities     []string   `json:"capabilities"`
	Groups           []string   `json:"groups"`
	EnrollmentMethod string     `json:"enrollment_method"`
	DPoPJKT          string     `json:"dpop_jkt,omitempty"`
	CreatedAt        time.Time  `json:"created_at"`
	UpdatedAt        time.Time  `json:"updated_at"`
	RevokedAt        *time.Time `json:"revoked_at,omitempty"`
	RevokedReason    string     `json:"revoked_reason,omitempty"`
	// Certificates are the agent's certificates, newest first.
	Certificates []*Cert `json:"certificates"`
}

// AgentFilter selects agents; the zero value selects all.
type AgentFilter struct {
	ID     string
	Status string
}

// Certificate statuses.
const (
	CertActive  = "active"
	CertGrace   = "grace"
	CertRetired = "retired"
)

// Cert is a certificate issued to an agent, pinned by the hex SHA-256 of
// its DER.
type Cert struct {
	SHA256     string     `json:"sha256"`
	AgentID    string     `json:"-"`
	Serial     string     `json:"serial"`
	Status     string     `json:"status"`
	NotBefore  time.Time  `json:"not_before"`
	NotAfter   time.Time  `json:"not_after"`
	GraceUntil *time.Time `json:"grace_until,omitempty"`
	CreatedAt  time.Time  `json:"-"`
	RetiredAt  *time.Time `json:"-"`
	// ChainPEM is the leaf and the intermediate, as issued.
	ChainPEM string `json:"-"`
}

// CertFilter selects certificates; the zero value selects all.
type CertFilter struct {
	// SHA256 selects the certificate with that pin (hex).
	SHA256   string
	AgentID  string
	Statuses []string
	// GraceEndedBy selects certificates in grace whose grace ended at or
	// before it.
	GraceEndedBy time.Time
}

// Enrollment statuses.
const (
	EnrollPending  = "pending"
	EnrollApproved = "approved"
	EnrollRejected = "rejected"
	EnrollExpired  = "expired"
)

// Enrollment is an enrollment session: an agent's request to enroll and
// an administrator's decision.
type Enrollment struct {
	SessionID       string     `json:"session_id"`
	Status          string     `json:"status"`
	PublicKeySHA256 string     `json:"pubkey_sha256"`
	RequesterName   string     `json:"requester_name"`
	RequesterEmail  string     `json:"requester_email"`
	Reason          string     `json:"reason"`
	DeviceInfo      string     `json:"device_info"`
	DPoPJKT         string     `json:"dpop_jkt,omitempty"`
	RemoteIP        string     `json:"remote_ip"`
	CreatedAt       time.Time  `json:"created_at"`
	ExpiresAt       time.Time  `json:"expires_at"`
	DecidedAt       *time.Time `json:"decided_at,omitempty"`
	DecidedBy       string     `json:"decided_by,omitempty"`
	AgentID         string     `json:"agent_id,omitempty"`
	Capabilities    []string   `json:"capabilities,omitempty"`
	Groups          []string   `json:"groups,omitempty"`
	RejectionReason string     `json:"rejection_reason,omitempty"`
	// PublicKeyPEM is the enrolling key; CertPEM the issued chain, once
	// approved. Neither is listed to administrators.
	PublicKeyPEM string `json:"-"`
	CertPEM      string `json:"-"`
}

// EnrollmentFilter selects sessions; the zero value selects all (at most
// Limit, default 1000).
type EnrollmentFilter struct {
	Status string
	// ExpiredBy selects pending sessions that expired at or before it.
	ExpiredBy time.Time
	Limit     int
}

// Signing key statuses.
const (
	KeyStaged     = "staged"
	KeyActive     = "active"
	KeyDeprecated = "deprecated"
)

// SigningKey is an access-token signing key. The private key is in the
// key store under KeyRef, never in the database.
type SigningKey struct {
	Kid          string
	Alg          string
	PublicJWK    string
	KeyRef       string
	Status       string
	CreatedAt    time.Time
	ActivatedAt  *time.Time
	DeprecatedAt *time.Time
	// ExpiresAt is when a deprecated key stops verifying.
	ExpiresAt *time.Time
}

// Server is an MCP server registered at runtime: Config is the JSON of
// its settings (credentials are placeholders or key-store names, never
// secrets).
type Server struct {
	Name      string
	Config    json.RawMessage
	CreatedAt time.Time
	UpdatedAt time.Time
}

// AuditRow is one stored row of the audit chain (see package audit for
// what the hash covers). Time is the stored text.
type AuditRow struct {
	Seq      int64
	Time     string
	Type     string
	Actor    string
	Subject  string
	Result   string
	Details  []byte // canonical JSON
	PrevHash []byte
	Hash     []byte
}

// AuditFilter selects audit rows; zero fields select everything.
type AuditFilter struct {
	From, To      int64     // seq range, inclusive (To <= 0: the newest)
	Since, Before time.Time // Since <= time < Before
	Type          string    // event type
	Actor         string
	Limit         int // at most this many rows (0: no limit)
}

// AuditSeqs selects the rows from seq from to seq to.
func AuditSeqs(from, to int64) AuditFilter { return AuditFilter{From: from, To: to} }

// AuditHead is the newest row of the chain.
type AuditHead struct {
	Seq  int64
	Hash []byte
}

// AuditAnchor stands for the rows an archive removed from the chain: the
// last removed row's seq, hash and time, and the Mastio's signed
// checkpoint of it (see audit.Checkpoint). The rows after it link to
// Hash; Seq 0 means nothing was ever archived.
type AuditAnchor struct {
	Seq        int64
	Hash       []byte
	Time       string // the row's stored time
	Checkpoint string // compact JWS
	// ArchiveSHA256 is the SHA-256 (hex) of the archive file the rows went
	// to, as its writer reported it.
	ArchiveSHA256 string
	ArchivedAt    string // when the rows were removed (stored time format)
}

// GenesisHash is the prev_hash of the first audit row.
var GenesisHash = make([]byte, sha256.Size)
