package audit

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Export formats.
const (
	// FormatNDJSON writes one JSON object (ExportRow) per line.
	FormatNDJSON = "ndjson"
	// FormatCSV writes a header line and one row per line, with the
	// columns of ExportRow in order and details as its canonical JSON.
	FormatCSV = "csv"
)

// ExportRow is an audit row as exported: everything Verify needs, the
// hashes in hex.
type ExportRow struct {
	Seq      int64           `json:"seq"`
	Time     string          `json:"time"`
	Type     string          `json:"event_type"`
	Actor    string          `json:"actor"`
	Subject  string          `json:"subject"`
	Result   string          `json:"result"`
	Details  json.RawMessage `json:"details"`
	PrevHash string          `json:"prev_hash"`
	Hash     string          `json:"hash"`
}

// exportColumns are the CSV header, in ExportRow's order.
var exportColumns = []string{"seq", "time", "event_type", "actor", "subject", "result", "details", "prev_hash", "hash"}

func exportRow(r store.AuditRow) ExportRow {
	return ExportRow{Seq: r.Seq, Time: r.Time, Type: r.Type, Actor: r.Actor, Subject: r.Subject, Result: r.Result,
		Details: r.Details, PrevHash: hex.EncodeToString(r.PrevHash), Hash: hex.EncodeToString(r.Hash)}
}

// Exported is what an export wrote.
type Exported struct {
	Rows        int64
	First, Last int64 // seqs; 0 when no row matched
}

// CheckFormat reports whether format is one Export writes.
func CheckFormat(format string) error {
	if format != FormatNDJSON && format != FormatCSV {
		return fmt.Errorf("format %q: want ndjson or csv", format)
	}
	return nil
}

// Export writes the rows f selects to w in chain order, one at a time:
// memory does not grow with the rows.
func Export(ctx context.Context, st store.Reader, f store.AuditFilter, format string, w io.Writer) (Exported, error) {
	if err := CheckFormat(format); err != nil {
		return Exported{}, err
	}
	var out Exported
	bw := bufio.NewWriterSize(w, 64<<10)
	var cw *csv.Writer
	if format == FormatCSV {
		cw = csv.NewWriter(bw)
		if err := cw.Write(exportColumns); err != nil {
			return out, err
		}
	}
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	err := st.AuditRows(ctx, f, func(r store.AuditRow) error {
		e := exportRow(r)
		var err error
		if cw != nil {
			err = cw.Write([]string{strconv.FormatInt(e.Seq, 10), e.Time, e.Type, e.Actor, e.Subject, e.Result, string(e.Details),
				e.PrevHash, e.Hash})
		} else {
			err = enc.Encode(e) // one line: the details are compact JSON
		}
		if err != nil {
			return err
		}
		if out.Rows == 0 {
			out.First = e.Seq
		}
		out.Rows, out.Last = out.Rows+1, e.Seq
		return ctx.Err()
	})
	if cw != nil {
		cw.Flush()
		if err == nil {
			err = cw.Error()
		}
	}
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	return out, err
}

// QueryError is a parameter of an export query that cannot be honoured.
type QueryError struct {
	Field string
	msg   string
}

func (e *QueryError) Error() string { return e.msg }

// ParseExportQuery reads the selection of an export from query parameters
// (GET /v1/admin/audit/export; caddy mastio audit export's flags):
//
//	format     ndjson (default) or csv
//	start      RFC 3339 time: rows at or after it
//	end        RFC 3339 time: rows before it
//	event_type one event type
//	actor      one actor
//	after_seq  rows after this seq (to resume an export)
//	limit      at most this many rows
//
// A parameter that is unknown, repeated or malformed is refused, naming
// it: an export that silently ignored a filter would hand an auditor the
// wrong rows.
func ParseExportQuery(q url.Values) (store.AuditFilter, string, *QueryError) {
	var f store.AuditFilter
	format := FormatNDJSON
	for key, vals := range q {
		if len(vals) != 1 {
			return f, "", &QueryError{key, fmt.Sprintf("%s is given %d times", key, len(vals))}
		}
		v := vals[0]
		var err error
		switch key {
		case "format":
			format, err = v, CheckFormat(v)
		case "start", "end":
			var t time.Time
			if t, err = time.Parse(time.RFC3339Nano, v); err == nil && key == "start" {
				f.Since = t
			} else if err == nil {
				f.Before = t
			}
		case "event_type":
			f.Type = v
		case "actor":
			f.Actor = v
		case "after_seq":
			var n int64
			if n, err = strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
				f.From = n + 1
			} else if err == nil {
				err = errors.New("want a seq, 0 or more")
			}
		case "limit":
			if f.Limit, err = strconv.Atoi(v); err == nil && f.Limit <= 0 {
				err = errors.New("want a positive number")
			}
		default:
			return f, "", &QueryError{key, fmt.Sprintf("unknown parameter %q (known: format, start, end, event_type, actor, after_seq, limit)", key)}
		}
		if err != nil {
			return f, "", &QueryError{key, fmt.Sprintf("%s %q: %v", key, v, err)}
		}
	}
	return f, format, nil
}
