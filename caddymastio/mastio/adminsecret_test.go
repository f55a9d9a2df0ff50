package mastio

import (
	"strings"
	"testing"
)

func TestSecretRoundTripAndMatch(t *testing.T) {
	const secret = "correct horse battery staple 42"
	s, err := NewSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	enc := s.String()
	if !strings.HasPrefix(enc, "hmac-sha256$") || strings.Contains(enc, secret) {
		t.Fatalf("stored form %q", enc)
	}
	back, err := ParseSecret(enc)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*Secret{s, back} {
		if !c.Match(secret) {
			t.Fatal("the secret does not match itself")
		}
		for _, wrong := range []string{"", secret + " ", strings.ToUpper(secret), secret[:len(secret)-1]} {
			if c.Match(wrong) {
				t.Fatalf("%q matched", wrong)
			}
		}
	}
	other, _ := NewSecret(secret)
	if other.String() == enc {
		t.Fatal("two derivations share a salt")
	}
	var nilSecret *Secret
	if nilSecret.Match(secret) {
		t.Fatal("a missing secret matched")
	}
	for _, bad := range []string{"", "plain", "hmac-sha256$AAAA$BBBB", "md5$x$y"} {
		if _, err := ParseSecret(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
