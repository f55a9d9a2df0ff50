package admin

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"filippo.io/age"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// BackupRequest is the body of POST /v1/admin/backup: the age recipients
// ("age1...", one or more) the backup is encrypted to. A backup holds the
// Org CA's keys: it is never sent unencrypted.
type BackupRequest struct {
	Recipients []string `json:"recipients"`
}

// maxBackupRecipients bounds a request's recipients.
const maxBackupRecipients = 16

// backup streams a backup (see mastio.Mastio.Backup), encrypted to the
// request's recipients. Like an export, a failure once the first byte is
// out aborts the connection, so a cut backup never looks whole (age
// refuses a cut stream too).
func (a *API) backup(w http.ResponseWriter, r *http.Request, c Caller) {
	var req BackupRequest
	if !decode(w, r, false, &req) {
		return
	}
	if len(req.Recipients) == 0 || len(req.Recipients) > maxBackupRecipients {
		httpjson.Error(w, 400, "invalid_request", fmt.Sprintf("give 1 to %d age recipients (age1...): a backup holds the Org CA keys and is always encrypted", maxBackupRecipients))
		return
	}
	recipients, err := age.ParseRecipients(strings.NewReader(strings.Join(req.Recipients, "\n")))
	if err != nil || len(recipients) != len(req.Recipients) {
		httpjson.Error(w, 400, "invalid_recipient", "recipients must be age public keys (age1...)")
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="mastio-backup-%s.age"`, time.Now().UTC().Format("20060102T150405Z")))
	sent := &sentWriter{w: w}
	man, err := a.m.Backup(r.Context(), sent, recipients, c.details())
	if err != nil {
		if sent.any {
			a.log.Error("backup failed midway", zap.Error(err))
			panic(http.ErrAbortHandler)
		}
		w.Header().Del("Content-Disposition")
		w.Header().Del("Content-Type")
		a.fail(w, r, err)
		return
	}
	a.log.Info("backup written", zap.Int64("audit_last_seq", man.AuditLastSeq), zap.Int("files", len(man.Files)),
		zap.String("database", man.Database))
}
