// Package jcs implements the JSON Canonicalization Scheme of RFC 8785.
//
// Canonical JSON is what the audit hash chain hashes: the same logical row
// always yields the same bytes, whatever produced the JSON.
package jcs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Canonicalize parses the JSON text in data and returns its RFC 8785
// canonical form. Duplicate object keys and invalid UTF-8 are rejected, as
// the RFC requires (I-JSON, RFC 7493).
func Canonicalize(data []byte) ([]byte, error) {
	if !utf8.Valid(data) {
		return nil, errors.New("jcs: input is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decodeValue(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("jcs: trailing data after JSON value")
	}
	var buf bytes.Buffer
	if err := encode(&buf, v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Marshal encodes v with encoding/json and canonicalizes the result.
// Plain Go values (maps with string keys, slices, strings, booleans, nil
// and numbers) are encoded directly, without the round trip through
// encoding/json; the output is the same either way.
func Marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(512) // most objects encoded here are small: one allocation, not a dozen doublings
	if encodeGo(&buf, v) {
		return buf.Bytes(), nil
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("jcs: %w", err)
	}
	return Canonicalize(raw)
}

type object struct {
	keys []string
	vals map[string]any
}

func decodeValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("jcs: %w", err)
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			obj := object{vals: map[string]any{}}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, fmt.Errorf("jcs: %w", err)
				}
				key, ok := kt.(string)
				if !ok {
					return nil, errors.New("jcs: object key is not a string")
				}
				if _, dup := obj.vals[key]; dup {
					return nil, fmt.Errorf("jcs: duplicate object key %q", key)
				}
				val, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				obj.keys = append(obj.keys, key)
				obj.vals[key] = val
			}
			if _, err := dec.Token(); err != nil { // '}'
				return nil, fmt.Errorf("jcs: %w", err)
			}
			return obj, nil
		case '[':
			var arr []any
			for dec.More() {
				val, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				arr = append(arr, val)
			}
			if _, err := dec.Token(); err != nil { // ']'
				return nil, fmt.Errorf("jcs: %w", err)
			}
			if arr == nil {
				arr = []any{}
			}
			return arr, nil
		}
		return nil, fmt.Errorf("jcs: unexpected delimiter %v", t)
	default:
		return t, nil // string, json.Number, bool, nil
	}
}

func encode(buf *bytes.Buffer, v any) error {
	switch t := v.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		if t {
			buf.WriteString("true")
		} else {
			buf.WriteString("false")
		}
	case string:
		writeString(buf, t)
	case json.Number:
		f, err := strconv.ParseFloat(string(t), 64)
		if err != nil {
			return fmt.Errorf("jcs: number %s: %w", t, err)
		}
		s, err := FormatNumber(f)
		if err != nil {
			return err
		}
		buf.WriteString(s)
	case []any:
		buf.WriteByte('[')
		for i, e := range t {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := encode(buf, e); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case object:
		keys := append([]string(nil), t.keys...)
		// RFC 8785 §3.2.3: sort by the UTF-16 code units of the keys.
		sort.Slice(keys, func(i, j int) bool { return lessUTF16(keys[i], keys[j]) })
		buf.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeString(buf, k)
			buf.WriteByte(':')
			if err := encode(buf, t.vals[k]); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	default:
		return fmt.Errorf("jcs: unsupported value %T", v)
	}
	return nil
}

// encodeGo writes the canonical form of v if v is built only of the
// types it knows, and reports whether it did.
func encodeGo(buf *bytes.Buffer, v any) bool {
	switch t := v.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		return encode(buf, t) == nil
	case string:
		if !utf8.ValidString(t) {
			return false // encoding/json substitutes U+FFFD; leave it to it
		}
		writeString(buf, t)
	case int:
		return encodeInt(buf, int64(t))
	case int64:
		return encodeInt(buf, t)
	case float64:
		s, err := FormatNumber(t)
		if err != nil {
			return false
		}
		buf.WriteString(s)
	case []string:
		return encodeSlice(buf, t)
	case []any:
		return encodeSlice(buf, t)
	case map[string]any:
		if t == nil {
			buf.WriteString("null")
			return true
		}
		keys := make([]string, 0, len(t))
		for k := range t {
			if !utf8.ValidString(k) {
				return false
			}
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return lessUTF16(keys[i], keys[j]) })
		buf.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeString(buf, k)
			buf.WriteByte(':')
			if !encodeGo(buf, t[k]) {
				return false
			}
		}
		buf.WriteByte('}')
	default:
		return false
	}
	return true
}

func encodeSlice[T any](buf *bytes.Buffer, s []T) bool {
	if s == nil {
		buf.WriteString("null")
		return true
	}
	buf.WriteByte('[')
	for i, e := range s {
		if i > 0 {
			buf.WriteByte(',')
		}
		if !encodeGo(buf, e) {
			return false
		}
	}
	buf.WriteByte(']')
	return true
}

// encodeInt writes i as JCS does: as the IEEE double it becomes, so
// integers beyond 2^53 are rounded exactly as a JSON parser would.
func encodeInt(buf *bytes.Buffer, i int64) bool {
	if i > -(1<<53) && i < 1<<53 {
		buf.WriteString(strconv.FormatInt(i, 10))
		return true
	}
	s, err := FormatNumber(float64(i))
	if err != nil {
		return false
	}
	buf.WriteString(s)
	return true
}

// lessUTF16 orders a and b by their UTF-16 code units without converting
// them: UTF-8 byte order is code point order, which differs from UTF-16
// order only between supplementary characters (surrogate pairs) and BMP
// characters from U+E000 up.
func lessUTF16(a, b string) bool {
	for a != "" && b != "" {
		ra, na := utf8.DecodeRuneInString(a)
		rb, nb := utf8.DecodeRuneInString(b)
		if ra != rb {
			a1, a2 := utf16Units(ra)
			b1, b2 := utf16Units(rb)
			if a1 != b1 {
				return a1 < b1
			}
			return a2 < b2
		}
		a, b = a[na:], b[nb:]
	}
	return len(a) < len(b)
}

func utf16Units(r rune) (uint16, uint16) {
	if r >= 0x10000 {
		r1, r2 := utf16.EncodeRune(r)
		return uint16(r1), uint16(r2)
	}
	return uint16(r), 0
}

// AppendString appends s to dst as an RFC 8785 JSON string.
func AppendString(dst *bytes.Buffer, s string) { writeString(dst, s) }

// writeString serializes s as RFC 8785 §3.2.2.2 requires: only the quote,
// the backslash and control characters are escaped, with the short forms
// where JSON has them and lower-case \u00xx otherwise.
func writeString(buf *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	buf.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '"':
			buf.WriteString(`\"`)
		case '\\':
			buf.WriteString(`\\`)
		case '\b':
			buf.WriteString(`\b`)
		case '\f':
			buf.WriteString(`\f`)
		case '\n':
			buf.WriteString(`\n`)
		case '\r':
			buf.WriteString(`\r`)
		case '\t':
			buf.WriteString(`\t`)
		default:
			if c < 0x20 {
				buf.WriteString(`\u00`)
				buf.WriteByte(hex[c>>4])
				buf.WriteByte(hex[c&0xF])
			} else {
				buf.WriteByte(c)
			}
		}
	}
	buf.WriteByte('"')
}

// FormatNumber renders f the way ECMAScript's Number.prototype.toString
// does, which RFC 8785 §3.2.2.3 mandates. NaN and infinities are not JSON.
func FormatNumber(f float64) (string, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "", fmt.Errorf("jcs: %v is not a valid JSON number", f)
	}
	if f == 0 {
		return "0", nil // also turns -0 into 0
	}
	sign := ""
	if f < 0 {
		f, sign = -f, "-"
	}
	format := byte('e')
	if f < 1e21 && f >= 1e-6 {
		format = 'f'
	}
	s := strconv.FormatFloat(f, format, -1, 64)
	if i := strings.IndexByte(s, 'e'); i > 0 && s[i+2] == '0' {
		// Go writes "1e+09" where ECMAScript writes "1e+9".
		s = s[:i+2] + s[i+3:]
	}
	return sign + s, nil
}
