package jcs

import (
	"encoding/json"
	"math"
	"testing"
)

func TestCanonicalizeRFC8785Examples(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{
			// RFC 8785 §3.2.2 sample input and output.
			name: "rfc8785-3.2.2",
			in: `{
  "numbers": [333333333.33333329, 1E30, 4.50,
              2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}`,
			want: `{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`,
		},
		{
			// RFC 8785 §3.2.3 sorting example (UTF-16 code unit order).
			name: "rfc8785-3.2.3",
			in:   `{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}`,
			want: "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\",\"\u00f6\":\"Latin Small Letter O With Diaeresis\",\"\u20ac\":\"Euro Sign\",\"\U0001F600\":\"Emoji: Grinning Face\",\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}",
		},
		{name: "nested-empty", in: `{ "b": [], "a": {} }`, want: `{"a":{},"b":[]}`},
	}
	for _, c := range cases {
		got, err := Canonicalize([]byte(c.in))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if string(got) != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
		}
	}
}

func TestFormatNumberRFC8785AppendixB(t *testing.T) {
	// IEEE-754 bit patterns and their ECMAScript forms, RFC 8785 Appendix B.
	cases := map[uint64]string{
		0x0000000000000000: "0",
		0x8000000000000000: "0",
		0x0000000000000001: "5e-324",
		0x8000000000000001: "-5e-324",
		0x7fefffffffffffff: "1.7976931348623157e+308",
		0xffefffffffffffff: "-1.7976931348623157e+308",
		0x4340000000000000: "9007199254740992",
		0xc340000000000000: "-9007199254740992",
		0x4430000000000000: "295147905179352830000",
		0x44b52d02c7e14af5: "9.999999999999997e+22",
		0x44b52d02c7e14af6: "1e+23",
		0x44b52d02c7e14af7: "1.0000000000000001e+23",
		0x444b1ae4d6e2ef4e: "999999999999999700000",
		0x444b1ae4d6e2ef4f: "999999999999999900000",
		0x444b1ae4d6e2ef50: "1e+21",
		0x3eb0c6f7a0b5ed8c: "9.999999999999997e-7",
		0x3eb0c6f7a0b5ed8d: "0.000001",
		0x41b3de4355555553: "333333333.3333332",
		0x41b3de4355555554: "333333333.33333325",
		0x41b3de4355555555: "333333333.3333333",
		0x41b3de4355555556: "333333333.3333334",
		0x41b3de4355555557: "333333333.33333343",
		0xbecbf647612f3696: "-0.0000033333333333333333",
		0x43143ff3c1cb0959: "1424953923781206.2",
	}
	for bits, want := range cases {
		got, err := FormatNumber(math.Float64frombits(bits))
		if err != nil {
			t.Fatalf("%016x: %v", bits, err)
		}
		if got != want {
			t.Errorf("%016x: got %s want %s", bits, got, want)
		}
	}
	for _, bad := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		if _, err := FormatNumber(bad); err == nil {
			t.Errorf("%v: expected an error", bad)
		}
	}
}

func TestCanonicalizeRejects(t *testing.T) {
	for _, in := range []string{`{"a":1,"a":2}`, "\"\xff\"", `{"a":1} {}`, `{"a":`, `1e400`} {
		if out, err := Canonicalize([]byte(in)); err == nil {
			t.Errorf("%q: expected an error, got %s", in, out)
		}
	}
}

func TestCanonicalizeIsIdempotent(t *testing.T) {
	in := `{"z":[1.0,2.50,"x\u0001"],"a":{"c":true,"b":null}}`
	once, err := Canonicalize([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	twice, err := Canonicalize(once)
	if err != nil {
		t.Fatal(err)
	}
	if string(once) != string(twice) {
		t.Fatalf("not idempotent: %s vs %s", once, twice)
	}
}

// Marshal encodes plain Go values directly; its output must be exactly
// what encoding/json followed by Canonicalize gives.
func TestMarshalDirectMatchesCanonicalize(t *testing.T) {
	values := []any{
		nil, true, false, "", "plain", "quote\" back\\ nl\n tab\t ctl\x01 <&> \u2028 é 😀",
		0, -1, 42, int64(1) << 53, int64(1)<<53 + 1, int64(-1) << 62, 1.5, 1e21, -0.0, 5e-324, 0.000001,
		[]string{"b", "a"}, []string(nil), []any{1, "x", nil, []any{}},
		map[string]any{}, map[string]any(nil),
		map[string]any{"b": 1, "a": "x", "\u20ac": true, "\U0001F600": 2, "\ufb33": 3, "aa": map[string]any{"z": []string{"q"}, "y": nil}},
		map[string]any{"agent": "orga::bot", "args_sha256": "ab12", "duration_ms": 3, "upstream_status": 200, "rule": "line 2: allow ..."},
		"bad utf8 \xff",                         // falls back to encoding/json's U+FFFD
		map[string]any{"k": struct{ A int }{1}}, // unknown type: falls back
	}
	for i, v := range values {
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		want, err := Canonicalize(raw)
		if err != nil {
			t.Fatalf("%d: canonicalize: %v", i, err)
		}
		got, err := Marshal(v)
		if err != nil {
			t.Fatalf("%d: marshal: %v", i, err)
		}
		if string(got) != string(want) {
			t.Errorf("%d: Marshal(%#v)\n got %s\nwant %s", i, v, got, want)
		}
	}
}
