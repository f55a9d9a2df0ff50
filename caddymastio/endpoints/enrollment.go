package endpoints

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// enrollmentPollInterval is what clients are told to wait between polls.
const enrollmentPollInterval = 5

// StartEnrollmentRequest is the body of POST /v1/enrollment/start as the
// original Mastio's connector SDK sends it.
type StartEnrollmentRequest struct {
	PubkeyPEM      string          `json:"pubkey_pem"`
	RequesterName  string          `json:"requester_name"`
	RequesterEmail string          `json:"requester_email"`
	Reason         string          `json:"reason"`
	DeviceInfo     json.RawMessage `json:"device_info"`
	DPoPJWK        json.RawMessage `json:"dpop_jwk"`
	PoPSignature   string          `json:"pop_signature"`
	PrincipalType  string          `json:"principal_type"`
}

// StartEnrollmentResponse is the answer to POST /v1/enrollment/start.
type StartEnrollmentResponse struct {
	SessionID     string `json:"session_id"`
	Status        string `json:"status"`
	PollURL       string `json:"poll_url"`
	EnrollURL     string `json:"enroll_url"`
	PollIntervalS int    `json:"poll_interval_s"`
	ExpiresAt     string `json:"expires_at"`
}

func (h *Handler) startEnrollment(w http.ResponseWriter, r *http.Request) {
	if h.anonymousLimited(w, r, "enrollment", "enrollment") {
		return
	}
	var body StartEnrollmentRequest
	if p := httpjson.Decode(w, r, 16<<10, false, &body); p != nil {
		httpjson.WriteProblem(w, p)
		return
	}
	if body.PrincipalType != "" && body.PrincipalType != "agent" {
		httpjson.WriteProblem(w, &httpjson.Problem{Status: 400, Code: "invalid_request", Field: "principal_type",
			Message: "principal_type: only \"agent\" can enroll here"})
		return
	}
	deviceInfo := ""
	if len(body.DeviceInfo) > 0 && string(body.DeviceInfo) != "null" {
		if err := json.Unmarshal(body.DeviceInfo, &deviceInfo); err != nil {
			deviceInfo = string(body.DeviceInfo) // a JSON object, kept as its text
		}
	}
	e, err := h.m.StartEnrollment(r.Context(), registry.EnrollmentRequest{
		PublicKeyPEM: body.PubkeyPEM, RequesterName: body.RequesterName, RequesterEmail: body.RequesterEmail,
		Reason: body.Reason, DeviceInfo: deviceInfo, DPoPJWK: body.DPoPJWK, PoPSignature: body.PoPSignature,
		RemoteIP: h.m.ClientIP(r),
	})
	if err != nil {
		h.registryError(w, r, err)
		return
	}
	h.log.Info("enrollment started", zap.String("session_id", e.SessionID), zap.String("remote_ip", e.RemoteIP),
		zap.String("pubkey_sha256", e.PublicKeySHA256))
	base := h.m.BaseURL(r)
	httpjson.Write(w, http.StatusCreated, StartEnrollmentResponse{
		SessionID:     e.SessionID,
		Status:        e.Status,
		PollURL:       base + "/v1/enrollment/" + e.SessionID + "/status",
		EnrollURL:     base + "/proxy/enrollments/" + e.SessionID,
		PollIntervalS: enrollmentPollInterval,
		ExpiresAt:     e.ExpiresAt.Format(time.RFC3339),
	})
}

// EnrollmentStatusResponse is the answer to GET
// /v1/enrollment/{sid}/status with a valid X-Enrollment-Proof.
type EnrollmentStatusResponse struct {
	SessionID       string   `json:"session_id"`
	Status          string   `json:"status"`
	AgentID         *string  `json:"agent_id"`
	CertPEM         *string  `json:"cert_pem"`
	CAPEM           string   `json:"ca_pem,omitempty"`
	Capabilities    []string `json:"capabilities"`
	RejectionReason *string  `json:"rejection_reason"`
	ExpiresAt       string   `json:"expires_at"`
}

func (h *Handler) enrollmentStatus(w http.ResponseWriter, r *http.Request) {
	if h.anonymousLimited(w, r, "enrollment_status", "enrollment status") {
		return
	}
	e, err := h.m.Registry().Enrollment(r.Context(), r.PathValue("sid"))
	if err != nil {
		h.registryError(w, r, err)
		return
	}
	if !registry.VerifyStatusProof(e, r.Header.Get("X-Enrollment-Proof")) {
		httpjson.Write(w, 200, map[string]any{
			"session_id": e.SessionID,
			"status":     e.Status,
			"hint":       "send X-Enrollment-Proof (the enrolling key's signature over \"enrollment-status:v1|<session_id>\") to receive the result",
		})
		return
	}
	resp := EnrollmentStatusResponse{SessionID: e.SessionID, Status: e.Status, Capabilities: []string{},
		ExpiresAt: e.ExpiresAt.Format(time.RFC3339)}
	switch e.Status {
	case registry.EnrollApproved:
		certPEM := e.CertPEM
		resp.AgentID, resp.CertPEM = &e.AgentID, &certPEM
		resp.Capabilities = e.Capabilities
		resp.CAPEM = string(h.m.CA().RootPEM())
	case registry.EnrollRejected:
		resp.RejectionReason = &e.RejectionReason
	}
	httpjson.Write(w, 200, resp)
}

// registryError answers a registry refusal as it is, anything else 500.
func (h *Handler) registryError(w http.ResponseWriter, r *http.Request, err error) {
	var re *registry.Error
	if errors.As(err, &re) {
		httpjson.WriteProblem(w, &httpjson.Problem{Status: re.Status, Code: re.Code, Message: re.Message, Field: re.Field})
		return
	}
	h.internalError(w, r, err)
}
