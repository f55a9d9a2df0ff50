package e2e

import (
	"strings"
	"testing"
)

// onPostgres makes every server a test starts use a Postgres database of
// its own (see newServer).
var onPostgres bool

// TestEverythingOnPostgres runs the end-to-end tests that do not open the
// SQLite file themselves again, each gateway on a real PostgreSQL
// database (internal/pgtest) instead of SQLite: enrollment, tokens, the
// MCP gateway and aggregator, the conformance suite, the admin API, the
// dashboard in a browser, the operator CLI, restarts.
func TestEverythingOnPostgres(t *testing.T) {
	onPostgres = true
	defer func() { onPostgres = false }()
	s := exampleServer(t, "", "")
	if ready := grepLines(s.out.String(), `"msg":"mastio ready"`); !strings.Contains(ready, `"database":"postgres://postgres@127.0.0.1:`) {
		t.Fatalf("the gateway does not run on Postgres: %s", ready)
	}
	s.stop()
	for _, c := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"MCPConformance", TestMCPConformance},
		{"StockClientsThroughConnect", TestStockClientsThroughConnect},
		{"ConnectReportsARevocation", TestConnectReportsARevocation},
		{"DashboardInARealBrowser", TestDashboardInARealBrowser},
		{"ReplayedListsAreFiltered", TestReplayedListsAreFiltered},
		{"ReplayRefusedAfterRestart", TestReplayRefusedAfterRestart},
		{"IdentityHeadersComeFromTheMastio", TestIdentityHeadersComeFromTheMastio},
		{"RejectedRegistrationWritesNoCredential", TestRejectedRegistrationWritesNoCredential},
		{"SecretsNeverReachALog", TestSecretsNeverReachALog},
		{"RotateCertOldRefusedAtOnceUnlessGrace", TestRotateCertOldRefusedAtOnceUnlessGrace},
		{"ForeignAndUnpinnedCertificatesAreRefused", TestForeignAndUnpinnedCertificatesAreRefused},
		{"EnrollmentRefusalsOverTheWire", TestEnrollmentRefusalsOverTheWire},
		{"OriginalSDKEnrollmentWireFormat", TestOriginalSDKEnrollmentWireFormat},
		{"AdminLockoutRecovery", TestAdminLockoutRecovery},
		{"PolicyBindings", TestPolicyBindings},
		{"MetricsAndDecisionLogsCountWhatHappened", TestMetricsAndDecisionLogsCountWhatHappened},
		{"EnrollmentLinkLeadsSomewhere", TestEnrollmentLinkLeadsSomewhere},
		{"OperatorCLI", TestOperatorCLI},
		{"AnonymousRateLimits", TestAnonymousRateLimits},
		{"TokenRejections", TestTokenRejections},
		{"TokenEndpointRefusals", TestTokenEndpointRefusals},
		{"AggregatorGetsUpstreamTokensWithClientCredentials", TestAggregatorGetsUpstreamTokensWithClientCredentials},
	} {
		t.Run(c.name, c.fn)
	}
}
