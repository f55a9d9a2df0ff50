package admin_test

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/caddy-mastio/caddy-mastio/admin"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/backup"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
)

// POST /v1/admin/backup answers an age-encrypted backup to the request's
// recipients, which checks whole and holds the snapshot and the Org CA; a
// request without a valid recipient is refused before anything is read.
func TestBackupOverTheAdminAPI(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	for _, body := range []string{`{}`, `{"recipients":[]}`, `{"recipients":["age1nope"]}`, `{"recipients":["x"],"extra":1}`} {
		status, v := e.do("POST", "/v1/admin/backup", body)
		if status != 400 {
			t.Fatalf("%s: %d %v, want 400", body, status, v)
		}
	}
	id, _ := age.GenerateX25519Identity()
	req, _ := http.NewRequest("POST", e.url+"/v1/admin/backup", strings.NewReader(`{"recipients":["`+id.Recipient().String()+`"]}`))
	req.Header.Set(admin.SecretHeader, mastiotest.AdminSecret)
	resp, err := e.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("backup: %d %s", resp.StatusCode, raw)
	}
	plain, err := age.Decrypt(bytes.NewReader(raw), id)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	man, err := backup.Read(plain, func(name string, _ os.FileMode) (io.WriteCloser, error) {
		names = append(names, name)
		return nopWriteCloser{io.Discard}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(names, " ")
	for _, want := range []string{backup.DatabaseName, "data/pki/org-ca.crt", "data/pki/org-ca.key", "data/pki/intermediate.key"} {
		if !strings.Contains(joined, want) {
			t.Fatalf("the backup lacks %s: %s", want, joined)
		}
	}
	if man.Database != "sqlite" || man.AuditLastSeq == 0 || man.RootSHA256 == "" {
		t.Fatalf("manifest: %+v", man)
	}
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
