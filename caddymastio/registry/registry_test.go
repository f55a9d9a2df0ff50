package registry

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/internal/testdb"
)

type fixture struct {
	r     *Registry
	st    *sql.DB // the test's own handle on the database
	ca    *pki.CA
	clock *time.Time
	p     Issuance
	store store.Store
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	dir := t.TempDir()
	st, raw := testdb.OpenSQLite(t)
	ca, _, err := pki.LoadOrCreate(pki.Config{Dir: filepath.Join(dir, "pki")})
	if err != nil {
		t.Fatal(err)
	}
	log := audit.Open(st, audit.Options{})
	t.Cleanup(func() { log.Close() })
	now := time.Now()
	f := &fixture{st: raw, ca: ca, clock: &now, p: Issuance{TrustDomain: "mastio.local"}, store: st}
	f.r, err = Open(context.Background(), Config{Store: st, Audit: log, CA: ca, Org: "acme",
		Now: func() time.Time { return *f.clock }})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) events(t testing.TB, typ string) int {
	var n int
	f.st.QueryRow(`SELECT COUNT(*) FROM audit_events WHERE event_type = ?`, typ).Scan(&n)
	return n
}

func sum(c *x509.Certificate) [32]byte { return sha256.Sum256(c.Raw) }

func asError(t *testing.T, err error, status int, code string) {
	t.Helper()
	var re *Error
	if !errors.As(err, &re) || re.Status != status || re.Code != code {
		t.Fatalf("got %v, want %d %s", err, status, code)
	}
}

func TestCreateMintsKeyAndPinsCert(t *testing.T) {
	f := newFixture(t)
	iss, err := f.r.CreateAgent(context.Background(), f.p, NewAgent{Name: "bot", Capabilities: []string{"tools:read", "tools:read"}, Method: "admin", Actor: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	if iss.KeyPEM == "" || iss.Agent.AgentID != "acme::bot" || iss.Agent.SPIFFEID != "spiffe://mastio.local/acme/bot" {
		t.Fatalf("%+v", iss.Agent)
	}
	if len(iss.Agent.Capabilities) != 1 {
		t.Errorf("duplicate capability kept: %v", iss.Agent.Capabilities)
	}
	key, err := pki.ParsePrivateKey([]byte(iss.KeyPEM))
	if err != nil || !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(iss.Cert.PublicKey) {
		t.Fatal("minted key does not match the certificate")
	}
	chain, _ := pki.ParseCertificatesPEM([]byte(iss.CertPEM))
	if len(chain) != 2 {
		t.Fatalf("cert_pem has %d certificates, want leaf + intermediate", len(chain))
	}
	id, cerr := f.r.Check(sum(iss.Cert))
	if cerr != nil || id.AgentID != "acme::bot" || id.InGrace {
		t.Fatalf("check: %+v %v", id, cerr)
	}
	if f.events(t, "agent.created") != 1 {
		t.Fatal("not audited")
	}
	var details string
	f.st.QueryRow(`SELECT details FROM audit_events WHERE event_type = 'agent.created'`).Scan(&details)
	if strings.Contains(details, "PRIVATE KEY") {
		t.Fatal("audit row holds the private key")
	}
	var stored int
	f.st.QueryRow(`SELECT COUNT(*) FROM agent_certs WHERE cert_pem LIKE '%PRIVATE%'`).Scan(&stored)
	if stored != 0 {
		t.Fatal("private key stored")
	}
	if _, err := f.r.CreateAgent(context.Background(), f.p, NewAgent{Name: "bot", Method: "admin", Actor: "admin"}); err == nil {
		t.Fatal("duplicate agent created")
	} else {
		asError(t, err, 409, "agent_exists")
	}
}

func TestCreateValidation(t *testing.T) {
	f := newFixture(t)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	cases := []struct {
		na    NewAgent
		field string
	}{
		{NewAgent{Name: "bad name"}, "agent_name"},
		{NewAgent{Name: ".."}, "agent_name"},
		{NewAgent{Name: strings.Repeat("x", 65)}, "agent_name"},
		{NewAgent{Name: "ok", Capabilities: []string{"has space"}}, "capabilities"},
		{NewAgent{Name: "ok", Groups: []string{""}}, "groups"},
		{NewAgent{Name: "ok", DisplayName: strings.Repeat("d", 201)}, "display_name"},
		{NewAgent{Name: "ok", PublicKey: small.Public()}, "public_key_pem"},
	}
	for _, c := range cases {
		_, err := f.r.CreateAgent(context.Background(), f.p, c.na)
		var re *Error
		if !errors.As(err, &re) || re.Field != c.field || re.Status != 400 {
			t.Errorf("%+v: got %v, want a 400 naming %s", c.na, err, c.field)
		}
	}
	var n int
	f.st.QueryRow(`SELECT COUNT(*) FROM agents`).Scan(&n)
	if n != 0 || f.events(t, "agent.created") != 0 {
		t.Fatal("invalid requests wrote something")
	}
}

func TestRevokeStopsAllCertsAtOnce(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	iss, _ := f.r.CreateAgent(ctx, f.p, NewAgent{Name: "bot", Method: "admin", Actor: "admin"})
	rot, _ := f.r.RotateCert(ctx, f.p, "acme::bot", Rotation{Grace: time.Hour, Actor: "admin"})
	a, err := f.r.Revoke(ctx, "acme::bot", "key_compromise", "admin", nil)
	if err != nil || a.Status != "revoked" || a.RevokedReason != "key_compromise" {
		t.Fatalf("%+v %v", a, err)
	}
	for _, c := range []*x509.Certificate{iss.Cert, rot.Cert} {
		if _, cerr := f.r.Check(sum(c)); cerr == nil || cerr.Code != DenyRevoked || cerr.Message != "Certificate has been revoked" {
			t.Fatalf("revoked cert: %v", cerr)
		}
	}
	_, err = f.r.Revoke(ctx, "acme::bot", "", "admin", nil)
	asError(t, err, 409, "agent_already_revoked")
	_, err = f.r.Revoke(ctx, "acme::nobody", "", "admin", nil)
	asError(t, err, 404, "agent_not_found")
	if f.events(t, "agent.revoked") != 1 {
		t.Fatal("revoke not audited exactly once")
	}

	// A restart (a fresh view from the database) agrees.
	r2, _ := Open(ctx, f.r.cfg)
	if _, cerr := r2.Check(sum(iss.Cert)); cerr == nil || cerr.Code != DenyRevoked {
		t.Fatalf("after reload: %v", cerr)
	}

	// The runbook's second step: re-issue clean material. The agent is
	// active again with the new certificate only; old ones stay dead.
	_, err = f.r.RotateCert(ctx, f.p, "acme::bot", Rotation{Grace: time.Hour, Actor: "admin"})
	asError(t, err, 400, "invalid_request")
	f.r.SetDPoPKey(ctx, "acme::bot", nil, "admin", nil) // refused: revoked (no effect)
	fresh, err := f.r.RotateCert(ctx, f.p, "acme::bot", Rotation{Actor: "admin"})
	if err != nil || fresh.Agent.Status != "active" || fresh.Agent.RevokedAt != nil || fresh.Agent.DPoPJKT != "" {
		t.Fatalf("re-issue after revoke: %+v %v", fresh, err)
	}
	if _, cerr := f.r.Check(sum(fresh.Cert)); cerr != nil {
		t.Fatalf("re-issued cert: %v", cerr)
	}
	for _, c := range []*x509.Certificate{iss.Cert, rot.Cert} {
		if _, cerr := f.r.Check(sum(c)); cerr == nil {
			t.Fatal("a revoked certificate works again after re-issue")
		}
	}
	var reactivated bool
	var d string
	f.st.QueryRow(`SELECT details FROM audit_events WHERE event_type = 'agent.cert_rotated' ORDER BY seq DESC LIMIT 1`).Scan(&d)
	reactivated = strings.Contains(d, `"reactivated":true`)
	if !reactivated {
		t.Fatalf("re-issue audit row: %s", d)
	}
}

func TestRotateRetiresAtOnceOrAfterGrace(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	first, _ := f.r.CreateAgent(ctx, f.p, NewAgent{Name: "bot", Method: "admin", Actor: "admin"})
	second, err := f.r.RotateCert(ctx, f.p, "acme::bot", Rotation{Actor: "admin"})
	if err != nil || second.KeyPEM == "" {
		t.Fatal(err)
	}
	if _, cerr := f.r.Check(sum(first.Cert)); cerr == nil || cerr.Code != "client_cert_pin_mismatch" {
		t.Fatalf("old cert after rotation without grace: %v", cerr)
	}
	if id, cerr := f.r.Check(sum(second.Cert)); cerr != nil || id.AgentID != "acme::bot" {
		t.Fatalf("new cert: %v", cerr)
	}

	// With an explicit grace period the previous cert keeps working until it ends.
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	third, err := f.r.RotateCert(ctx, f.p, "acme::bot", Rotation{PublicKey: k.Public(), Grace: 10 * time.Minute, Actor: "admin"})
	if err != nil || third.KeyPEM != "" {
		t.Fatalf("rotation with a given key: %v (key minted: %v)", err, third != nil && third.KeyPEM != "")
	}
	if id, cerr := f.r.Check(sum(second.Cert)); cerr != nil || !id.InGrace {
		t.Fatalf("cert in grace: %+v %v", id, cerr)
	}
	*f.clock = f.clock.Add(11 * time.Minute)
	if _, cerr := f.r.Check(sum(second.Cert)); cerr == nil {
		t.Fatal("cert accepted after its grace period")
	}
	if n, err := f.r.ExpireGrace(ctx); err != nil || n != 1 {
		t.Fatalf("ExpireGrace: %d %v", n, err)
	}
	a, _ := f.r.GetAgent(ctx, "acme::bot")
	if len(a.Certificates) != 3 || a.Certificates[0].Status != "active" {
		t.Fatalf("certificates: %+v", a.Certificates)
	}
	_, err = f.r.RotateCert(ctx, f.p, "acme::bot", Rotation{Grace: 8 * 24 * time.Hour})
	asError(t, err, 400, "invalid_request")
	_, err = f.r.RotateCert(ctx, f.p, "acme::ghost", Rotation{})
	asError(t, err, 404, "agent_not_found")
}

func TestUnknownCertificateIsNotPinned(t *testing.T) {
	f := newFixture(t)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	// Issued by the right CA for an existing name, but never registered.
	f.r.CreateAgent(context.Background(), f.p, NewAgent{Name: "bot", Method: "admin", Actor: "admin"})
	rogue, _ := f.ca.IssueAgent(pki.AgentCert{PublicKey: k.Public(), Identity: pki.AgentIdentity{TrustDomain: "mastio.local", Org: "acme", Name: "bot"}})
	if _, cerr := f.r.Check(sum(rogue)); cerr == nil || cerr.Code != DenyNotPinned {
		t.Fatalf("unpinned cert: %v", cerr)
	}
}

func TestDPoPKeyRegistration(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.r.CreateAgent(ctx, f.p, NewAgent{Name: "bot", Method: "admin", Actor: "admin"})
	// RFC 9449 example key and thumbprint.
	jwk := json.RawMessage(`{"kty":"EC","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA","crv":"P-256"}`)
	a, err := f.r.SetDPoPKey(ctx, "acme::bot", jwk, "admin", nil)
	if err != nil || a.DPoPJKT != "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" {
		t.Fatalf("%v %q", err, a.DPoPJKT)
	}
	for _, bad := range []string{
		`{"kty":"EC","crv":"P-256","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA","d":"xyz"}`,
		`{"kty":"oct","k":"c2VjcmV0"}`,
		`{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}`,
		`"not an object"`,
	} {
		_, err := f.r.SetDPoPKey(ctx, "acme::bot", json.RawMessage(bad), "admin", nil)
		var re *Error
		if !errors.As(err, &re) || re.Field != "dpop_jwk" {
			t.Errorf("%s: %v", bad, err)
		}
	}
	if f.events(t, "agent.dpop_jwk_set") != 1 {
		t.Fatal("audit count")
	}
}

// enrollKey is an agent-side key for enrollment tests.
type enrollKey struct {
	priv *ecdsa.PrivateKey
	pem  string
	spki []byte
}

func newEnrollKey(t testing.TB) enrollKey {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(k.Public())
	return enrollKey{k, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})), spki}
}

func (k enrollKey) sign(msg []byte) string {
	d := sha256.Sum256(msg)
	sig, _ := ecdsa.SignASN1(rand.Reader, k.priv, d[:])
	return base64.RawURLEncoding.EncodeToString(sig)
}

func (k enrollKey) request() EnrollmentRequest {
	return EnrollmentRequest{PublicKeyPEM: k.pem, RequesterName: "Ada", RequesterEmail: "ada@example.com",
		PoPSignature: k.sign(PoPMessage(k.spki)), RemoteIP: "127.0.0.1",
		DPoPJWK: json.RawMessage(`{"kty":"EC","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA","crv":"P-256"}`)}
}

func TestEnrollmentApproveFlow(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	k := newEnrollKey(t)
	e, err := f.r.StartEnrollment(ctx, f.p, k.request())
	if err != nil {
		t.Fatal(err)
	}
	if len(e.SessionID) != 32 || e.Status != EnrollPending || e.ExpiresAt.Sub(e.CreatedAt) != DefaultEnrollmentTTL {
		t.Fatalf("%+v", e)
	}
	got, _ := f.r.Enrollment(ctx, e.SessionID)
	if !VerifyStatusProof(got, k.sign(StatusProofMessage(e.SessionID))) {
		t.Fatal("valid status proof refused")
	}
	other := newEnrollKey(t)
	for _, forged := range []string{"", "AAAA", other.sign(StatusProofMessage(e.SessionID)), k.sign(StatusProofMessage("other-session"))} {
		if VerifyStatusProof(got, forged) {
			t.Fatalf("forged proof %q accepted", forged)
		}
	}
	done, agent, err := f.r.Approve(ctx, f.p, e.SessionID, Approval{AgentName: "acme::ada-laptop", Capabilities: []string{"mcp:call"}, Actor: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	if done.Status != EnrollApproved || done.AgentID != "acme::ada-laptop" || agent.DPoPJKT != "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" {
		t.Fatalf("%+v %+v", done, agent)
	}
	chain, err := pki.ParseCertificatesPEM([]byte(done.CertPEM))
	if err != nil || len(chain) != 2 || !chain[0].PublicKey.(*ecdsa.PublicKey).Equal(k.priv.Public()) {
		t.Fatal("issued certificate is not for the enrolled key")
	}
	if _, cerr := f.r.Check(sum(chain[0])); cerr != nil {
		t.Fatal(cerr)
	}
	_, _, err = f.r.Approve(ctx, f.p, e.SessionID, Approval{AgentName: "again", Actor: "admin"})
	asError(t, err, 409, "enrollment_not_pending")
	if err.(*Error).Message != "Cannot approve an enrollment in status 'approved'" {
		t.Fatalf("message %q", err.(*Error).Message)
	}
	for _, typ := range []string{"enrollment.started", "enrollment.approved", "agent.created"} {
		if f.events(t, typ) != 1 {
			t.Errorf("%s audited %d times", typ, f.events(t, typ))
		}
	}
	res, _ := audit.Verify(ctx, f.store, 1, 0)
	if !res.OK() {
		t.Fatal(res.Reason)
	}
}

func TestEnrollmentRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	k, other := newEnrollKey(t), newEnrollKey(t)

	req := k.request()
	req.PoPSignature = other.sign(PoPMessage(k.spki)) // PoP by another key
	_, err := f.r.StartEnrollment(ctx, f.p, req)
	asError(t, err, 400, "invalid_pop_signature")

	req = k.request()
	req.PoPSignature = k.sign(PoPMessage(other.spki)) // PoP over another key
	_, err = f.r.StartEnrollment(ctx, f.p, req)
	asError(t, err, 400, "invalid_pop_signature")

	for field, mutate := range map[string]func(*EnrollmentRequest){
		"pubkey_pem":      func(r *EnrollmentRequest) { r.PublicKeyPEM = strings.Repeat("x", 200) },
		"requester_name":  func(r *EnrollmentRequest) { r.RequesterName = "" },
		"requester_email": func(r *EnrollmentRequest) { r.RequesterEmail = "not-an-email" },
		"dpop_jwk":        func(r *EnrollmentRequest) { r.DPoPJWK = json.RawMessage(`{"kty":"oct","k":"AA"}`) },
		"pop_signature":   func(r *EnrollmentRequest) { r.PoPSignature = "" },
	} {
		r := k.request()
		mutate(&r)
		_, err := f.r.StartEnrollment(ctx, f.p, r)
		var re *Error
		if !errors.As(err, &re) || re.Field != field {
			t.Errorf("%s: %v", field, err)
		}
	}
	var n int
	f.st.QueryRow(`SELECT COUNT(*) FROM enrollments`).Scan(&n)
	if n != 0 || f.events(t, "enrollment.started") != 0 {
		t.Fatal("refused requests wrote something")
	}

	// Expiry.
	e, _ := f.r.StartEnrollment(ctx, f.p, k.request())
	*f.clock = f.clock.Add(31 * time.Minute)
	got, _ := f.r.Enrollment(ctx, e.SessionID)
	if got.Status != EnrollExpired {
		t.Fatalf("status %s", got.Status)
	}
	_, _, err = f.r.Approve(ctx, f.p, e.SessionID, Approval{AgentName: "late", Actor: "admin"})
	asError(t, err, 409, "enrollment_not_pending")
	if f.events(t, "enrollment.expired") != 1 {
		t.Fatal("expiry not audited once")
	}
	_, err = f.r.Enrollment(ctx, "nope")
	asError(t, err, 404, "enrollment_not_found")

	// Reject, and the agent name under another org.
	e2, _ := f.r.StartEnrollment(ctx, f.p, k.request())
	_, _, err = f.r.Approve(ctx, f.p, e2.SessionID, Approval{AgentName: "x", Actor: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	e3, _ := f.r.StartEnrollment(ctx, f.p, k.request())
	rej, err := f.r.Reject(ctx, e3.SessionID, "unknown device", "admin", nil)
	if err != nil || rej.Status != EnrollRejected || rej.RejectionReason != "unknown device" {
		t.Fatalf("%+v %v", rej, err)
	}
	_, err = f.r.ResolveAgentName("agent_id", "globex::x")
	if err == nil {
		t.Fatal("agent id of another org accepted")
	}
}

func TestRSAPSSProofOfPossession(t *testing.T) {
	f := newFixture(t)
	k, _ := rsa.GenerateKey(rand.Reader, 2048)
	spki, _ := x509.MarshalPKIXPublicKey(k.Public())
	d := sha256.Sum256(PoPMessage(spki))
	sig, _ := rsa.SignPSS(rand.Reader, k, crypto.SHA256, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	_, err := f.r.StartEnrollment(context.Background(), f.p, EnrollmentRequest{
		PublicKeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})), RequesterName: "R",
		RequesterEmail: "r@example.com", PoPSignature: base64.RawURLEncoding.EncodeToString(sig)})
	if err != nil {
		t.Fatal(err)
	}
}

// BenchmarkCheck is the per-request identity check: hash lookup of a
// presented certificate in the pin view (10,000 agents registered).
func BenchmarkCheck(b *testing.B) {
	f := newFixture(b)
	var target [32]byte
	f.r.mu.Lock()
	for i := 0; i < 10000; i++ {
		var k [32]byte
		rand.Read(k[:])
		id := "acme::bot" + string(rune('a'+i%26))
		f.r.pins[k] = pinEntry{agentID: id, state: certActive}
		f.r.agents[id] = agentEntry{spiffeID: "spiffe://x/acme/" + id}
		target = k
	}
	f.r.mu.Unlock()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := f.r.Check(target); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkCheckDER includes hashing the certificate DER, as a request
// that carries only the certificate does.
func BenchmarkCheckDER(b *testing.B) {
	f := newFixture(b)
	iss, err := f.r.CreateAgent(context.Background(), f.p, NewAgent{Name: "bot", Method: "admin", Actor: "admin"})
	if err != nil {
		b.Fatal(err)
	}
	der := iss.Cert.Raw
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := f.r.CheckDER(der); err != nil {
			b.Fatal(err)
		}
	}
}

// A reload that read the store before a local revocation must not install
// its stale view over the revocation (another instance's change arriving
// at the same moment would otherwise un-revoke the agent until the next
// reload).
func TestReloadDoesNotUndoALocalChange(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	iss, err := f.r.CreateAgent(ctx, f.p, NewAgent{Name: "bot", Method: "admin", Actor: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	f.r.mu.RLock()
	before := f.r.gen
	f.r.mu.RUnlock()
	if _, err := f.r.Revoke(ctx, iss.Agent.AgentID, "stolen", "admin", nil); err != nil {
		t.Fatal(err)
	}
	if done, err := f.r.reloadAt(ctx, before); err != nil || done {
		t.Fatalf("a reload begun before the revocation was installed: %v %v", done, err)
	}
	if _, ok := f.r.Lookup(iss.Agent.AgentID); ok {
		t.Fatal("the revoked agent is active again")
	}
	if err := f.r.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.r.Lookup(iss.Agent.AgentID); ok {
		t.Fatal("the revoked agent is active after a fresh reload")
	}
}

// A session id never starts with "-": the operator types it on a command
// line.
func TestSessionIDsAreCommandLineSafe(t *testing.T) {
	for range 2000 {
		sid, err := newSessionID()
		if err != nil || len(sid) != 32 || sid[0] == '-' {
			t.Fatalf("session id %q %v", sid, err)
		}
	}
}
