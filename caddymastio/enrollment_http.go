package caddymastio

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// enrollmentPollInterval is what clients are told to wait between polls.
const enrollmentPollInterval = 5

// enrollmentStartBody is the wire format of POST /v1/enrollment/start as
// the original Mastio's connector SDK sends it.
type enrollmentStartBody struct {
	PubkeyPEM      string          `json:"pubkey_pem"`
	RequesterName  string          `json:"requester_name"`
	RequesterEmail string          `json:"requester_email"`
	Reason         string          `json:"reason"`
	DeviceInfo     json.RawMessage `json:"device_info"`
	DPoPJWK        json.RawMessage `json:"dpop_jwk"`
	PoPSignature   string          `json:"pop_signature"`
	PrincipalType  string          `json:"principal_type"`
}

// baseURL is where clients reach this Mastio: public_url, or the scheme
// and host of the request.
func (h *Handler) baseURL(r *http.Request) string {
	if u := h.app.PublicURLString(); u != "" {
		return u
	}
	scheme := "https"
	if r.TLS == nil {
		scheme = "http"
	}
	return scheme + "://" + r.Host
}

func (h *Handler) serveEnrollment(w http.ResponseWriter, r *http.Request) error {
	path := r.URL.Path
	switch {
	case path == "/v1/enrollment/start":
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			httpjson.Error(w, 405, "method_not_allowed", "use POST")
			return nil
		}
		return h.startEnrollment(w, r)
	case strings.HasPrefix(path, "/v1/enrollment/") && strings.HasSuffix(path, "/status"):
		sid := strings.TrimSuffix(strings.TrimPrefix(path, "/v1/enrollment/"), "/status")
		if sid == "" || strings.Contains(sid, "/") {
			break
		}
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", "GET")
			httpjson.Error(w, 405, "method_not_allowed", "use GET")
			return nil
		}
		return h.enrollmentStatus(w, r, sid)
	}
	httpjson.Error(w, 404, "not_found", "no route "+path)
	return nil
}

func (h *Handler) startEnrollment(w http.ResponseWriter, r *http.Request) error {
	if h.anonymousLimited(w, r, "enrollment", "enrollment") {
		return nil
	}
	var body enrollmentStartBody
	if p := httpjson.Decode(w, r, 16<<10, false, &body); p != nil {
		httpjson.WriteProblem(w, p)
		return nil
	}
	if body.PrincipalType != "" && body.PrincipalType != "agent" {
		httpjson.WriteProblem(w, &httpjson.Problem{Status: 400, Code: "invalid_request", Field: "principal_type",
			Message: "principal_type: only \"agent\" can enroll here"})
		return nil
	}
	deviceInfo := ""
	if len(body.DeviceInfo) > 0 && string(body.DeviceInfo) != "null" {
		if err := json.Unmarshal(body.DeviceInfo, &deviceInfo); err != nil {
			deviceInfo = string(body.DeviceInfo) // a JSON object, kept as its text
		}
	}
	e, err := h.app.Registry().StartEnrollment(r.Context(), h.app.Policy(), registry.EnrollmentRequest{
		PublicKeyPEM: body.PubkeyPEM, RequesterName: body.RequesterName, RequesterEmail: body.RequesterEmail,
		Reason: body.Reason, DeviceInfo: deviceInfo, DPoPJWK: body.DPoPJWK, PoPSignature: body.PoPSignature,
		RemoteIP: clientIP(r),
	})
	if err != nil {
		return h.registryError(w, r, err)
	}
	h.logger.Info("enrollment started", zap.String("session_id", e.SessionID), zap.String("remote_ip", e.RemoteIP),
		zap.String("pubkey_sha256", e.PublicKeySHA256))
	base := h.baseURL(r)
	httpjson.Write(w, http.StatusCreated, map[string]any{
		"session_id":      e.SessionID,
		"status":          e.Status,
		"poll_url":        base + "/v1/enrollment/" + e.SessionID + "/status",
		"enroll_url":      base + "/proxy/enrollments/" + e.SessionID,
		"poll_interval_s": enrollmentPollInterval,
		"expires_at":      e.ExpiresAt.Format(time.RFC3339),
	})
	return nil
}

func (h *Handler) enrollmentStatus(w http.ResponseWriter, r *http.Request, sid string) error {
	if h.anonymousLimited(w, r, "enrollment_status", "enrollment status") {
		return nil
	}
	e, err := h.app.Registry().Enrollment(r.Context(), sid)
	if err != nil {
		return h.registryError(w, r, err)
	}
	if !e.VerifyStatusProof(r.Header.Get("X-Enrollment-Proof")) {
		httpjson.Write(w, 200, map[string]any{
			"session_id": e.SessionID,
			"status":     e.Status,
			"hint":       "send X-Enrollment-Proof (the enrolling key's signature over \"enrollment-status:v1|<session_id>\") to receive the result",
		})
		return nil
	}
	resp := map[string]any{
		"session_id":       e.SessionID,
		"status":           e.Status,
		"agent_id":         nil,
		"cert_pem":         nil,
		"capabilities":     []string{},
		"rejection_reason": nil,
		"expires_at":       e.ExpiresAt.Format(time.RFC3339),
	}
	switch e.Status {
	case registry.EnrollApproved:
		resp["agent_id"] = e.AgentID
		resp["cert_pem"] = e.CertPEM()
		resp["capabilities"] = e.Capabilities
		resp["ca_pem"] = string(h.app.CA().RootPEM())
	case registry.EnrollRejected:
		resp["rejection_reason"] = e.RejectionReason
	}
	httpjson.Write(w, 200, resp)
	return nil
}

// registryError writes a registry refusal, or a 500 for anything else.
func (h *Handler) registryError(w http.ResponseWriter, r *http.Request, err error) error {
	var re *registry.Error
	if errors.As(err, &re) {
		httpjson.WriteProblem(w, &httpjson.Problem{Status: re.Status, Code: re.Code, Message: re.Message, Field: re.Field})
		return nil
	}
	return h.internalError(w, r, err)
}

func (h *Handler) internalError(w http.ResponseWriter, r *http.Request, err error) error {
	h.logger.Error("request failed", zap.String("path", r.URL.Path), zap.Error(err))
	httpjson.Error(w, 500, "internal_error", "the request could not be completed")
	return nil
}

// serveEnrollmentLink is the page the approval link printed by `caddy
// mastio enroll` leads to (GET /proxy/enrollments/{sid}): until a
// dashboard exists, the admin API calls that approve or reject the session.
// It needs no secret and shows nothing of the request itself: only that a
// session with this (unguessable) id is waiting.
func (h *Handler) serveEnrollmentLink(w http.ResponseWriter, r *http.Request) {
	sid := strings.TrimPrefix(r.URL.Path, "/proxy/enrollments/")
	e, err := h.app.Registry().Enrollment(r.Context(), sid)
	if err != nil || strings.Contains(sid, "/") {
		notFound(w, r.URL.Path)
		return
	}
	base := h.baseURL(r)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	fmt.Fprintf(w, `Enrollment session %s: %s.

This version of caddy-mastio has no dashboard: an administrator decides the
session with the admin API (ADMIN_SECRET is the admin secret; on a default
install it is in data/admin-secret):

  Approve, naming the agent and what it may do:
    curl --cacert org-ca.crt -H "X-Admin-Secret: $ADMIN_SECRET" -X POST \
      %s/v1/admin/enrollments/%s/approve \
      -d '{"agent_id":"<agent-name>","capabilities":["mcp:call"],"groups":[]}'

  Reject, with a reason the agent will see:
    curl --cacert org-ca.crt -H "X-Admin-Secret: $ADMIN_SECRET" -X POST \
      %s/v1/admin/enrollments/%s/reject -d '{"reason":"..."}'

  See who asked (requester, e-mail, reason, key):
    curl --cacert org-ca.crt -H "X-Admin-Secret: $ADMIN_SECRET" "%s/v1/admin/enrollments?status=pending"
`, e.SessionID, e.Status, base, e.SessionID, base, e.SessionID, base)
}
