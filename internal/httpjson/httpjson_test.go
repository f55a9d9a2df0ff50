package httpjson

import (
	"net/http/httptest"
	"strings"
	"testing"
)

type body struct {
	Name  string   `json:"name"`
	Caps  []string `json:"capabilities"`
	Grace int      `json:"grace_seconds"`
}

func TestDecodeNamesTheField(t *testing.T) {
	cases := []struct {
		in, code, field string
		status          int
	}{
		{`{"name":"a","bogus":1}`, "invalid_request", "bogus", 400},
		{`{"name":7}`, "invalid_request", "name", 400},
		{`{"capabilities":"x"}`, "invalid_request", "capabilities", 400},
		{`{"grace_seconds":"1h"}`, "invalid_request", "grace_seconds", 400},
		{`{"name":`, "invalid_request", "", 400},
		{`{"name":"a"} {}`, "invalid_request", "", 400},
		{`[1,2]`, "invalid_request", "", 400},
		{`{"name":"` + strings.Repeat("x", 2000) + `"}`, "request_too_large", "", 413},
		{``, "invalid_request", "", 400},
		// Strict reading: a member twice, or in another letter case, is
		// named and refused rather than read one way or another.
		{`{"name":"a","name":"b"}`, "invalid_request", "name", 400},
		{`{"name":"a","Name":"b"}`, "invalid_request", "Name", 400},
		{`{"NAME":"a"}`, "invalid_request", "NAME", 400},
		{`{"\u006eame":"a","name":"b"}`, "invalid_request", "name", 400},
		{"{\"name\":\"\xff\"}", "invalid_request", "", 400},
	}
	for _, c := range cases {
		r := httptest.NewRequest("POST", "/", strings.NewReader(c.in))
		var v body
		p := Decode(httptest.NewRecorder(), r, 1024, false, &v)
		if p == nil || p.Code != c.code || p.Field != c.field || p.Status != c.status || (c.field != "" && !strings.Contains(p.Message, c.field)) {
			t.Errorf("%.40q: got %+v, want %d %s field %q", c.in, p, c.status, c.code, c.field)
		}
	}
	r := httptest.NewRequest("POST", "/", strings.NewReader(`{"name":"ok","capabilities":["a"],"grace_seconds":5}`))
	r.Header.Set("Content-Type", "application/json; charset=utf-8")
	var v body
	if p := Decode(httptest.NewRecorder(), r, 1024, false, &v); p != nil || v.Name != "ok" || v.Grace != 5 {
		t.Fatalf("%+v %+v", p, v)
	}
	if p := Decode(httptest.NewRecorder(), httptest.NewRequest("POST", "/", nil), 1024, true, &v); p != nil {
		t.Fatalf("empty body with allowEmpty: %v", p)
	}
}
