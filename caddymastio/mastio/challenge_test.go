package mastio

import (
	"path/filepath"
	"testing"
	"time"
)

// TestChallengeHasOneEncoding: a login challenge is used up by its string,
// so another string for the same bytes (Go's base64 skips line breaks)
// would use it twice; such a string is not a challenge.
func TestChallengeHasOneEncoding(t *testing.T) {
	dir := t.TempDir()
	m := instance(t, dir, Database(filepath.Join(dir, "mastio.db")))
	c := m.NewChallenge("orga::a")
	if _, err := m.checkChallenge("orga::a", c, time.Now()); err != nil {
		t.Fatalf("the challenge itself: %v", err)
	}
	for _, v := range []string{c + "\n", c[:10] + "\r" + c[10:]} {
		if _, err := m.checkChallenge("orga::a", v, time.Now()); err == nil {
			t.Errorf("%q accepted as the challenge %q", v, c)
		}
	}
}
